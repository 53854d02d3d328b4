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

from discourse_rl.common import DiscourseRLError
from discourse_rl.layout import RunLayout

if TYPE_CHECKING:  # numpy stays out of `discourse-rl --help` (STAGES is read from here)
    from discourse_rl.arrays import FloatArray
    from discourse_rl.data import Essay
    from discourse_rl.ner import NerPredictor


SCHEMA_VERSION = 1
"""Version of the labels' JSON schema (`predict --format jsonl` lines, the web API): an element
is {type, word_start, word_end, char_start, char_end, text, confidence}; a line or response
carries it as "schema_version". A change that breaks a reader bumps it."""

STAGES = ("ner-naive", "ner-tuned", "ner-constrained", "gbdt", "bc", "ppo", "episode")
"""Every stage a run may offer for labelling, in pipeline order."""
AGENT_STAGES = ("bc", "ppo", "episode")


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
class StageScores:
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
    from discourse_rl.records import RENAMED_STAGES

    if stage in RENAMED_STAGES:
        new = RENAMED_STAGES[stage]
        raise DiscourseRLError(f"stage {stage!r} is now called {new!r} (use --stage {new})")
    if stage not in STAGES:
        raise DiscourseRLError(f"stage: expected one of {', '.join(STAGES)}, got {stage!r}")
    return stage


def _policy_path(layout: RunLayout, stage: str) -> Path:
    return layout.policy(stage)


def offered_stages(run: str | Path) -> tuple[str, ...]:
    """The stages a run folder can label with (its NER models exist; thresholds; policies)."""
    layout = RunLayout(run)
    if not (layout.ner_encoder / "config.json").is_file():
        return ()
    stages = ["ner-naive"]
    if layout.tuned.is_file():
        stages.append("ner-tuned")
    if layout.constrained.is_file():
        stages.append("ner-constrained")
    if (layout.gbdt / "params.json").is_file():
        stages.append("gbdt")
    if layout.segments_config.is_file():
        stages += [s for s in AGENT_STAGES if _policy_path(layout, s).is_file()]
    return tuple(stages)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DiscourseRLError(f"{path}: invalid JSON ({exc})") from None


def heldout_scores(run: str | Path) -> dict[str, StageScores]:
    """Each stage's F1 on essays it did not train on.

    The agent stage's table (held-out essays, mean over seeds) where it exists; else the NER
    stage's out-of-fold scores."""
    from discourse_rl.data import CLASSES
    from discourse_rl.records import heldout_table

    layout = RunLayout(run)
    out: dict[str, StageScores] = {}
    table = heldout_table(layout.root)
    if table.rows:
        source = f"{table.n_heldout} held-out essays"
        for row in table.rows:
            if row.stage in STAGES:
                per_type = {
                    c: s.mean for c, s in row.per_class.items() if c in CLASSES and s.mean == s.mean
                }
                out[row.stage] = StageScores(row.macro_f1.mean, per_type, source)
    ner = _read_json(layout.ner_metrics)
    if isinstance(ner, dict):
        n = ner.get("essays")
        source = f"out of fold over {n} essays" if n else "out of fold"
        for stage, key in (("ner-naive", "naive"), ("ner-tuned", "tuned_cross_fitted")):
            if stage in out or not isinstance(ner.get(key), dict):
                continue
            s = ner[key]
            per_type = {
                c: float(v["f1"])
                for c, v in s.get("per_class", {}).items()
                if c in CLASSES and v.get("f1") is not None
            }
            out[stage] = StageScores(float(s["macro_f1"]), per_type, source)
        for stage, key in (("ner-naive", "naive"), ("ner-tuned", "tuned_cross_fitted")):
            recall = _recall(ner.get(key))
            if stage in out and recall:
                n = ner.get("essays")
                where = f"out of fold over {n} essays" if n else "out of fold"
                out[stage] = replace(out[stage], recall=recall, recall_source=where)
    return out


def _recall(score: Any) -> dict[str, float]:
    """Per type TP / (TP + FN) of a metrics entry that records its counts."""
    from discourse_rl.data import CLASSES

    out: dict[str, float] = {}
    per_class = score.get("per_class") if isinstance(score, dict) else None
    for c, v in (per_class or {}).items():
        if c in CLASSES and isinstance(v, dict) and "tp" in v and "fn" in v:
            n = int(v["tp"]) + int(v["fn"])
            if n:
                out[c] = int(v["tp"]) / n
    return out


def default_stage(run: str | Path) -> str:
    """The run's best stage on held-out essays among those it can label with."""
    offered = offered_stages(run)
    if not offered:
        raise DiscourseRLError(
            f"{run}: not a trained run folder (no NER model in {RunLayout(run).ner_encoder})"
        )
    exported = _read_json(Path(run) / "export.json")
    if isinstance(exported, dict) and exported.get("stage") in offered:
        return str(exported["stage"])  # an exported model: the stage it was exported for
    from discourse_rl.pipeline import best_stage

    return canonical_stage(best_stage(run, offered))


class Labeller:
    """A trained run loaded once, ready to label essays (thread-safe, one call at a time)."""

    def __init__(self, run: Path, stage: str, ner: NerPredictor) -> None:
        self.run = run
        self.stage = stage
        self._ner = ner
        self._layout = RunLayout(run)
        self._offered = offered_stages(run)
        self._decoders: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._scores: dict[str, StageScores] | None = None

    @classmethod
    def load(cls, run: str | Path, stage: str | None = None) -> Labeller:
        """Load a run folder (or an exported model .zip); `stage` None = the run's best."""
        from discourse_rl.export import open_model
        from discourse_rl.records import check_format

        given = Path(run)
        run = open_model(given)
        try:
            check_format(run)  # a folder an older version wrote: one clear line, not a KeyError
        except DiscourseRLError as exc:
            if run == given:
                raise
            # Name the file the user gave, not the cache it was unpacked into.
            raise DiscourseRLError(f"{given}: {str(exc).split(': ', 1)[-1]}") from None
        offered = offered_stages(run)
        stage = default_stage(run) if stage is None else canonical_stage(stage)
        if stage not in offered:
            have = ", ".join(offered) or "none"
            raise DiscourseRLError(f"{run}: stage {stage!r} not trained in this run (has: {have})")
        from discourse_rl.ner import NerPredictor

        labeller = cls(run, stage, NerPredictor.load(run))
        labeller._decoder(stage)  # a broken policy or thresholds file fails now, not mid-request
        return labeller

    @property
    def stages(self) -> tuple[str, ...]:
        """Every stage this run can label with."""
        return self._offered

    @property
    def scores(self) -> dict[str, StageScores]:
        if self._scores is None:
            self._scores = heldout_scores(self.run)
        return self._scores

    # --- labelling -----------------------------------------------------------------------------
    def label(self, text: str) -> list[Element]:
        """The discourse elements of one essay, in text order."""
        return self.label_many([text])[0]

    def label_many(self, texts: Sequence[str]) -> list[list[Element]]:
        """`label` for many essays, batched through the model in one pass."""
        from discourse_rl.data import Essay

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

    # --- stages --------------------------------------------------------------------------------
    def _decoder(self, stage: str) -> Any:
        if stage not in self._decoders:
            if stage == "ner-tuned":
                from discourse_rl.decode import load_thresholds

                self._decoders[stage] = load_thresholds(self._layout.tuned)
            elif stage == "ner-constrained":
                from discourse_rl.spans.stage import load_constrained

                self._decoders[stage] = load_constrained(self.run)
            elif stage == "gbdt":
                from discourse_rl.spans import SpanModel

                self._decoders[stage] = SpanModel.load(self._layout.gbdt)
            elif stage in AGENT_STAGES:
                from discourse_rl.agent.policy import load_policy
                from discourse_rl.common import config_from_dict, load_toml
                from discourse_rl.segments import SegmentConfig

                path = self._layout.segments_config
                seg_cfg = config_from_dict(SegmentConfig, load_toml(path), where=str(path))
                self._decoders[stage] = (seg_cfg, load_policy(_policy_path(self._layout, stage)))
            else:
                self._decoders[stage] = None
        return self._decoders[stage]

    def _spans(
        self, stage: str, essays: Mapping[str, Essay], probs: Mapping[str, FloatArray]
    ) -> dict[str, list[tuple[int, int, int]]]:
        """Essay id -> (class index, word_start, word_end) per span, in text order."""
        import numpy as np

        from discourse_rl import decode
        from discourse_rl.data import CLASS_INDEX

        decoder = self._decoder(stage)
        out: dict[str, list[tuple[int, int, int]]] = {k: [] for k in essays}
        if stage in AGENT_STAGES and probs:
            from discourse_rl.agent.policy import predict_actions
            from discourse_rl.segments import actions_to_spans, make_segments, paragraph_starts

            seg_cfg, policy = decoder
            words = {k: e.words for k, e in essays.items()}
            paras = paragraph_starts(essays, list(probs)) if seg_cfg.rich_features else None
            segs = make_segments(probs, seg_cfg, list(probs), words, paras)
            for seg, act in zip(segs, predict_actions(policy, segs), strict=True):
                c, s, e = actions_to_spans(seg, act)
                out[seg.essay_id] = _sorted_spans(c, s, e)
            return out
        if stage == "gbdt" and probs:
            table = decoder.predict(probs, essays)
            for k, g in table.groupby("id", sort=False):
                out[str(k)] = _sorted_spans(
                    g["class"].map(CLASS_INDEX), g["word_start"], g["word_end"]
                )
            return out
        for k, p in probs.items():
            if stage == "ner-tuned":
                c, s, e = decode.decode_tuned(p, decoder)
            elif stage == "ner-constrained":
                from discourse_rl.constrained import decode_constrained

                c, s, e = decode_constrained(np.asarray(p), decoder)
            else:
                c, s, e = decode.decode_naive(np.asarray(p))
            out[k] = _sorted_spans(c, s, e)
        return out


def _sorted_spans(c: Any, s: Any, e: Any) -> list[tuple[int, int, int]]:
    return sorted(
        ((int(a), int(b), int(d)) for a, b, d in zip(c, s, e, strict=True)), key=lambda x: x[1]
    )


def _elements(text: str, probs: FloatArray, spans: Sequence[tuple[int, int, int]]) -> list[Element]:
    import numpy as np

    from discourse_rl.data import CLASSES
    from discourse_rl.decode import span_probs

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
    import pandas as pd

    from discourse_rl.data import predictionstring

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
