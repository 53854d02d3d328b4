"""The run's one held-out table: every training step's rows on the protocol's held-out essays,
merged (one row per decoder, plus the segment oracle's)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.records import (
    ORACLE,
    AgentResults,
    HeldOutEssays,
    SpansResults,
    StageScores,
    StepResults,
)
from discourse_rl.decoders import registry
from discourse_rl.run.runformat import check_format


@dataclass(frozen=True)
class HeldOutTable:
    """A run's held-out rows from every second stage, merged (one row per stage)."""

    rows: tuple[StageScores, ...]
    heldout: HeldOutEssays | None
    n_heldout: int
    spans: SpansResults | None
    agent: AgentResults | None

    def stage(self, name: str) -> StageScores | None:
        return next((s for s in self.rows if s.stage == name), None)


NER_RL_TITLES = {
    "ner-rl": "the tagger after its RL phase on the metric, most likely label per word",
    "ner-rl-tuned": "the RL-trained tagger with per-class minima fitted on training essays",
    "ner-control": "the control: the tagger trained on by cross-entropy for the RL phase's time",
    "ner-control-tuned": "the control with per-class minima fitted on training essays",
}
"""The rows of step ner_rl (RUN/ner/rl/results.json), with their lines under the table. They
are not decoders: labelling new essays reads the tagger the second stages were fitted on
(`[ner_rl] feeds`)."""
NER_RL_ROWS = tuple(NER_RL_TITLES)


def row_order() -> tuple[str, ...]:
    """The table's rows: the decoders in registry order, the segment oracle before the agent's."""
    names = list(registry.names())
    agent = registry.trained_by("agent")
    names.insert(names.index(agent[0]) if agent else len(names), ORACLE)
    # The tagger's RL phase and its control (step ner_rl) after the tagger's own rows.
    after = names.index("ner-tuned") + 1 if "ner-tuned" in names else 0
    names[after:after] = NER_RL_ROWS
    return tuple(names)


def heldout_table(run: str | Path) -> HeldOutTable:
    """Every step's rows in `row_order`. They face the same held-out essays under the split
    protocol; a row two steps hold (the NER rows) is taken from the earlier step."""
    lay = RunLayout(run)
    spans = SpansResults.read(lay.gbdt_results) if lay.gbdt_results.is_file() else None
    agent = AgentResults.read(lay.agent_results) if lay.agent_results.is_file() else None
    if spans is not None and agent is not None and agent.heldout != spans.heldout:
        # Different held-out essays (e.g. a simulated agent): rows of both cannot share a table.
        spans = None
    first: StepResults | None = spans if spans is not None else agent
    own: list[StepResults] = []
    for dec in registry.decoders():
        path = lay.decoder_results(dec.name)
        if dec.own_step() and path.is_file():
            res = StepResults.read(path)
            if first is None:
                first = res
            if res.heldout == first.heldout:
                own.append(res)
    rl_path = lay.ner / "rl" / "results.json"
    if rl_path.is_file():
        res = StepResults.read(rl_path)
        if first is None:
            first = res
        if res.heldout == first.heldout:
            own.append(res)
    by_name: dict[str, StageScores] = {}
    for step in (spans, agent, *own):
        for s in step.stages if step is not None else ():
            by_name.setdefault(s.stage, s)
    order = {name: k for k, name in enumerate(row_order())}
    rows = tuple(sorted(by_name.values(), key=lambda s: order.get(s.stage, len(order))))
    return HeldOutTable(
        rows,
        None if first is None else first.heldout,
        0 if first is None else first.n_heldout,
        spans,
        agent,
    )


def best_stage(run: str | Path, choices: Sequence[str] | None = None) -> str:
    """The stage with the highest held-out macro F1 among `choices` in the run's held-out table
    (the gbdt step's and the agent step's rows; a tie goes to the earlier, simpler stage).

    Without a held-out table: the NER step's last decoding the run has (ner-tuned once fitted).
    """
    choices = registry.names() if choices is None else choices
    lay = RunLayout(run)
    check_format(lay.root)
    table = heldout_table(lay.root)
    scored = {s.stage: s.macro_f1.mean for s in table.rows if s.stage in choices}
    scored = {k: v for k, v in scored.items() if v == v}
    if scored:
        return max(scored, key=lambda k: scored[k])
    if not lay.ner.is_dir():
        raise DiscourseRLError(f"{lay.root}: not a trained run (no ner/ folder)")
    # The tagger's decodings the run has, the last (the fitted one) first.
    fitted = [d.name for d in registry.decoders() if d.step == "ner" and d.saved(lay) is not None]
    return fitted[-1] if fitted else registry.trained_by("ner")[0]
