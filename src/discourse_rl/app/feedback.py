"""What a teacher can act on: the element types present, what is missing, what is unsure.

Shared by the terminal view (`discourse-rl label`) and the web page (`discourse-rl serve`, which
receives the same summary as JSON).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from discourse_rl.app.labeller import Element
from discourse_rl.core.data import CLASSES

UNSURE_BELOW = 0.5
"""An element whose confidence is below this is listed as one the model is unsure of."""
GUESS_BELOW = 0.3
"""A type whose held-out F1 is below this is called a guess."""
RELIABLE_FROM = 0.6
"""A type whose held-out F1 reaches this is called reliable."""
SHOW_UNSURE = 8
"""The terminal and the page list this many unsure elements, then say how many more."""

# Colours per type: the terminal (rich) and the page (CSS) use the same ones.
COLOURS = {
    "Lead": "#8dd3c7",
    "Position": "#ffd92f",
    "Claim": "#80b1d3",
    "Counterclaim": "#fb8072",
    "Rebuttal": "#bc80bd",
    "Evidence": "#b3de69",
    "Concluding Statement": "#fdb462",
}
# Elements that end an argument's run: Evidence after one of these supports it, not a Claim
# before it.
_ARGUMENT_BREAKS = ("Claim", "Counterclaim", "Concluding Statement")


@dataclass(frozen=True)
class Summary:
    counts: dict[str, int]
    """Elements per type (every type, zeros included)."""
    missing: list[str]
    """Plain sentences: 'no Counterclaim', 'Claim 2 has no Evidence after it', ..."""
    unsure: list[int]
    """Indices (into the element list) of elements with confidence below UNSURE_BELOW."""
    reliability: dict[str, str]
    """Per type: 'reliable', 'fair' or 'a guess' from its held-out F1 ('unknown' without)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def reliability_word(f1: float | None) -> str:
    if f1 is None or f1 != f1:
        return "unknown"
    if f1 < GUESS_BELOW:
        return "a guess"
    return "reliable" if f1 >= RELIABLE_FROM else "fair"


def summarise(elements: Sequence[Element], per_type_f1: Mapping[str, float]) -> Summary:
    """The summary of one labelled essay; `per_type_f1` is the stage's held-out F1 per type."""
    counts = {c: 0 for c in CLASSES}
    for el in elements:
        counts[el.type] += 1
    missing = [f"no {c}" for c in CLASSES if counts[c] == 0]
    ordered = sorted(elements, key=lambda el: el.word_start)
    claim_no = 0
    for i, el in enumerate(ordered):
        if el.type != "Claim":
            continue
        claim_no += 1
        supported = False
        for later in ordered[i + 1 :]:
            if later.type == "Evidence":
                supported = True
                break
            if later.type in _ARGUMENT_BREAKS:
                break
        if not supported:
            missing.append(f"Claim {claim_no} (“{_shorten(el.text)}”) has no Evidence after it")
    unsure = [i for i, el in enumerate(elements) if el.confidence < UNSURE_BELOW]
    reliability = {c: reliability_word(per_type_f1.get(c)) for c in CLASSES}
    return Summary(counts, missing, unsure, reliability)


def _shorten(text: str, words: int = 8) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" …" if len(parts) > words else "")


def render_terminal(
    text: str,
    elements: Sequence[Element],
    summary: Summary,
    per_type_f1: Mapping[str, float],
    stage: str,
    console: Any = None,
) -> None:
    """The essay with each element in its type's colour, a legend, then the summary (rich)."""
    # rich: only the terminal view draws with it
    from rich.console import Console
    from rich.style import Style
    from rich.text import Text

    console = console or Console()
    styles = {c: Style(color="black", bgcolor=COLOURS[c]) for c in CLASSES}
    body = Text()
    pos = 0
    for el in sorted(elements, key=lambda e: e.char_start):
        body.append(text[pos : el.char_start])
        label = f"[{el.type}{' ?' if el.confidence < UNSURE_BELOW else ''}] "
        body.append(label, style=styles[el.type] + Style(bold=True))
        body.append(text[el.char_start : el.char_end], style=styles[el.type])
        pos = el.char_end
    body.append(text[pos:])
    console.print(body)
    console.print()
    legend = Text("Legend: ")
    for c in CLASSES:
        legend.append(f" {c} ", style=styles[c])
        legend.append(" ")
    console.print(legend)
    console.print()
    console.print(Text(f"Summary (stage {stage})", style="bold"))
    for c in CLASSES:
        f1 = per_type_f1.get(c)
        how = "" if f1 is None else f"   held-out F1 {f1:.2f}: {summary.reliability[c]}"
        console.print(Text(f"  {c:<22}{summary.counts[c]:>3}{how}"))
    if summary.missing:
        console.print(Text("Missing", style="bold"))
        for line in summary.missing:
            console.print(Text(f"  - {line}"))
    if summary.unsure:
        console.print(Text(f"Unsure (confidence below {UNSURE_BELOW})", style="bold"))
        for i in summary.unsure[:SHOW_UNSURE]:
            el = elements[i]
            console.print(Text(f"  - {el.type} {el.confidence:.2f}: “{_shorten(el.text)}”"))
        if len(summary.unsure) > SHOW_UNSURE:
            more = len(summary.unsure) - SHOW_UNSURE
            console.print(Text(f"  … and {more} more (marked '?' in the essay above)"))
