"""Label essays with a trained run: one loaded model, elements with character offsets.

`Labeller.load(run)` reads a run folder once (tokenizer, encoder, fold models, thresholds,
policies); `label(text)` returns the essay's discourse elements. `predict`, `label` and `serve`
all go through it.

An element's **confidence** is defined the same way for every stage: the mean, over the
element's words, of the tagger's probability that the word belongs to an element of that type
(P(B-type) + P(I-type), the fold models' mean). The agent stages choose spans differently from
the NER decodings, but their confidence reads the same tagger probabilities, so a number means
the same thing whichever stage drew the span.

Concurrency: a Labeller serialises its calls with a lock. torch's intra-op thread count is
process-wide, so running two essays at once on the CPU would only split the same cores; one
call at a time keeps each call's latency predictable.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from discourse_rl.app.model_file import SHIPPED, exported_stage, open_model
from discourse_rl.core.common import DiscourseRLError, read_json
from discourse_rl.core.data import CLASSES, Essay, predictionstring
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.records import NerMetrics
from discourse_rl.decoders import registry
from discourse_rl.decoders.decode import span_probs
from discourse_rl.decoders.registry import Span
from discourse_rl.run.heldout import best_stage, heldout_table
from discourse_rl.run.runformat import check_format

if TYPE_CHECKING:  # numpy stays out of `discourse-rl --help` (STAGES is read from here)
    from discourse_rl.core.arrays import FloatArray
    from discourse_rl.core.data import Essay
    from discourse_rl.ner import NerPredictor


SCHEMA_VERSION = 1
"""Version of the labels' JSON schema (`predict --format jsonl` lines, the web API): an element
is {type, word_start, word_end, char_start, char_end, text, confidence}; a line or response
carries it as "schema_version". A change that breaks a reader bumps it."""


@dataclass(frozen=True)
class Element:
    """One discourse element of an essay.

    `word_start`/`word_end` are half-open over `text.split()`; `char_start`/`char_end` index the
    original text, so `text[char_start:char_end] == element.text` (first word's first character
    to last word's last character, whatever whitespace lies between)."""

    type: str
    word_start: int
    word_end: int
    char_start: int
    char_end: int
    text: str
    confidence: float
    """Mean over the element's words of the tagger's P(B-type) + P(I-type), in [0, 1]."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HeldOutF1:
    """How well a stage did on essays it never saw: macro F1 and F1 per element type."""

    macro_f1: float
    per_type: dict[str, float]
    source: str
    """Where the numbers come from, e.g. 'held-out essays (agent/results.json)'."""
    recall: dict[str, float] = field(default_factory=dict)
    """Per type, the share of true elements the stage finds on essays it never saw (empty where
    the run records none for this stage)."""
    recall_source: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def word_char_spans(text: str) -> list[tuple[int, int]]:
    """Character range of each word of `text.split()` in `text`.

    Words hold no whitespace and only whitespace separates them, so searching each word from the
    end of the previous one finds exactly its position."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for word in text.split():
        start = text.find(word, pos)
        pos = start + len(word)
        spans.append((start, pos))
    return spans


def canonical_stage(stage: str) -> str:
    """`stage` if it names a registered decoder; else one clear line."""
    return registry.get(stage).name


def offered_stages(run: str | Path) -> tuple[str, ...]:
    """The stages a run folder can label with (its tagger exists, and each decoder's files)."""
    return registry.offered(run)


def heldout_scores(run: str | Path) -> dict[str, HeldOutF1]:
    """Each stage's F1 on essays it did not train on.

    The agent stage's table (held-out essays, mean over seeds) where it exists; else the NER
    stage's out-of-fold scores."""

    layout = RunLayout(run)
    out: dict[str, HeldOutF1] = {}
    table = heldout_table(layout.root)
    if table.rows:
        source = f"{table.n_heldout} held-out essays"
        for row in table.rows:
            if row.stage in registry.names():
                per_type = {
                    c: s.mean for c, s in row.per_class.items() if c in CLASSES and s.mean == s.mean
                }
                out[row.stage] = HeldOutF1(row.macro_f1.mean, per_type, source)
    ner = NerMetrics.read(layout.ner_metrics) if layout.ner_metrics.is_file() else None
    if ner is not None:
        source = f"out of fold over {ner.essays} essays" if ner.essays else "out of fold"
        for decoder in registry.decoders():
            oof = None if decoder.name in out else decoder.out_of_fold(ner)
            if oof is not None:
                per_type = {
                    c: f1 for c, f1 in oof[0].per_class.items() if c in CLASSES and f1 == f1
                }
                out[decoder.name] = HeldOutF1(oof[0].macro_f1, per_type, source)
        raw = read_json(layout.ner_metrics, None)
        for decoder in registry.decoders():
            oof = decoder.out_of_fold(ner)
            recall = _recall(raw, oof[0].macro_f1) if oof is not None else {}
            if decoder.name in out and recall:
                out[decoder.name] = replace(out[decoder.name], recall=recall, recall_source=source)
    recorded = read_json(layout.heldout_recall, None)
    if isinstance(recorded, dict) and isinstance(recorded.get("stages"), dict):
        source = f"{recorded.get('essays', 'the')} held-out essays"
        for stage, per in recorded["stages"].items():
            recall = {
                c: float(v)
                for c, v in (per.items() if isinstance(per, dict) else ())
                if c in CLASSES and isinstance(v, int | float)
            }
            if stage in out and recall:
                out[stage] = replace(out[stage], recall=recall, recall_source=source)
    return out


def _recall(raw: Any, macro_f1: float) -> dict[str, float]:
    """Per type TP / (TP + FN) of the NER metrics entry whose macro F1 is `macro_f1` (the
    decoder's out-of-fold score), where the entry records its counts."""
    entries = raw.values() if isinstance(raw, dict) else ()
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("macro_f1") != macro_f1:
            continue
        out: dict[str, float] = {}
        for c, v in (entry.get("per_class") or {}).items():
            if c in CLASSES and isinstance(v, dict) and "tp" in v and "fn" in v:
                n = int(v["tp"]) + int(v["fn"])
                if n:
                    out[c] = int(v["tp"]) / n
        return out
    return {}


def default_stage(run: str | Path) -> str:
    """The run's best stage on held-out essays among those it can label with."""
    offered = offered_stages(run)
    if not offered:
        raise DiscourseRLError(
            f"{run}: not a trained run folder (no NER model in {RunLayout(run).ner_encoder})"
        )
    exported = exported_stage(Path(run), offered)  # an exported model: the stage it was made for
    return exported or canonical_stage(best_stage(run, offered))


class Labeller:
    """A trained run loaded once, ready to label essays (thread-safe, one call at a time)."""

    def __init__(self, run: Path, stage: str, ner: NerPredictor) -> None:
        self.run = run
        self.stage = stage
        self._ner = ner
        self._layout = RunLayout(run)
        self._offered = offered_stages(run)
        self._decoders: dict[str, registry.Decoder] = {}
        self._lock = threading.Lock()
        self._scores: dict[str, HeldOutF1] | None = None

    @classmethod
    def load(cls, run: str | Path | None = None, stage: str | None = None) -> Labeller:
        """Load a run folder or an exported model .zip (None: the shipped model); `stage` None =
        the run's best."""

        given = SHIPPED if run is None else Path(run)
        run = open_model(given)
        try:
            check_format(run)  # a folder an older version wrote: one clear line, not a KeyError
        except DiscourseRLError as exc:
            if run == given:
                raise
            # Name the file the user gave, not the cache it was unpacked into.
            raise DiscourseRLError(f"{given}: {str(exc).split(': ', 1)[-1]}") from None
        from discourse_rl.run import lock as runlock  # only when a model is loaded

        runlock.check_complete(run, ("ner",))  # before the best stage is looked for
        stage = default_stage(run) if stage is None else canonical_stage(stage)
        needs = runlock.stages_for(stage, run)
        before = runlock.snapshot(run, needs)  # a stage being rewritten: one line, not a guess
        offered = offered_stages(run)
        if stage not in offered:
            have = ", ".join(offered) or "none"
            raise DiscourseRLError(f"{run}: stage {stage!r} not trained in this run (has: {have})")
        # torch and transformers come with the tagger: loaded with a model, not on import
        from discourse_rl.ner import NerPredictor

        labeller = cls(run, stage, NerPredictor.load(run))
        labeller._decoder(stage)  # a broken policy or thresholds file fails now, not mid-request
        runlock.unchanged(run, needs, before)
        return labeller

    @property
    def stages(self) -> tuple[str, ...]:
        """Every stage this run can label with."""
        return self._offered

    @property
    def scores(self) -> dict[str, HeldOutF1]:
        if self._scores is None:
            self._scores = heldout_scores(self.run)
        return self._scores

    # --- labelling -----------------------------------------------------------------------------
    def label(self, text: str) -> list[Element]:
        """The discourse elements of one essay, in text order."""
        return self.label_many([text])[0]

    def label_many(self, texts: Sequence[str]) -> list[list[Element]]:
        """`label` for many essays, batched through the model in one pass."""

        essays = {f"{i:08d}": Essay.from_text(f"{i:08d}", t) for i, t in enumerate(texts)}
        out = self.label_essays(essays)[self.stage]
        return [out[k] for k in essays]

    def label_essays(
        self,
        essays: Mapping[str, Essay],
        stages: Sequence[str] | None = None,
        progress: bool = False,
    ) -> dict[str, dict[str, list[Element]]]:
        """Stage -> essay id -> elements, for every stage in `stages` (default: this labeller's
        stage) from one pass of the tagger."""
        stages = [self.stage] if stages is None else [canonical_stage(s) for s in stages]
        missing = [s for s in stages if s not in self._offered]
        if missing:
            raise DiscourseRLError(f"{self.run}: stage {missing[0]!r} not trained in this run")
        with self._lock:
            worded = {k: e for k, e in essays.items() if e.words}
            probs = self._ner.predict(worded, progress=progress) if worded else {}
            out: dict[str, dict[str, list[Element]]] = {}
            for stage in stages:
                spans = self._spans(stage, worded, probs)
                out[stage] = {
                    k: _elements(e.text, probs[k], spans[k]) if k in probs else []
                    for k, e in essays.items()
                }
        return out

    # --- stages ----------------------------------------------------------------------------
    def _decoder(self, stage: str) -> registry.Decoder:
        if stage not in self._decoders:
            self._decoders[stage] = registry.get(stage).load(self.run)
        return self._decoders[stage]

    def _spans(
        self, stage: str, essays: Mapping[str, Essay], probs: Mapping[str, FloatArray]
    ) -> dict[str, list[Span]]:
        """Essay id -> (class index, word_start, word_end) per span, in text order."""
        out: dict[str, list[Span]] = {k: [] for k in essays}
        out.update(self._decoder(stage).predict(probs, essays))
        return out


def _elements(text: str, probs: FloatArray, spans: Sequence[Span]) -> list[Element]:

    if not spans:
        return []
    chars = word_char_spans(text)
    arr = np.array(spans, dtype=np.int64)
    conf = span_probs(np.asarray(probs, dtype=np.float32), (arr[:, 0], arr[:, 1], arr[:, 2]))
    out = []
    for (c, s, e), p in zip(spans, conf, strict=True):
        lo, hi = chars[s][0], chars[e - 1][1]
        confidence = min(1.0, max(0.0, round(float(p), 4)))
        out.append(Element(CLASSES[c], s, e, lo, hi, text[lo:hi], confidence))
    return out


def elements_frame(labelled: Mapping[str, Sequence[Element]]) -> Any:
    """Kaggle submission table (id, class, predictionstring) of labelled essays."""

    rows = [
        (k, el.type, predictionstring(el.word_start, el.word_end))
        for k, els in labelled.items()
        for el in els
    ]
    return pd.DataFrame(rows, columns=["id", "class", "predictionstring"])


def elements_jsonl(labelled: Mapping[str, Sequence[Element]], stage: str) -> str:
    """One JSON object per essay: {"schema_version", "id", "stage", "elements": [Element...]}."""
    lines = [
        json.dumps(
            {
                "schema_version": SCHEMA_VERSION,
                "id": k,
                "stage": stage,
                "elements": [el.to_json() for el in els],
            },
            ensure_ascii=False,
        )
        for k, els in labelled.items()
    ]
    return "".join(line + "\n" for line in lines)
