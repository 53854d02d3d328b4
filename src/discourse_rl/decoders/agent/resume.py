"""Resuming the agent stage per seed and per trainer.

A trainer that finished writes `done.json` beside its policy, last of all its files: the key of
what it was trained from, its held-out score and its figures. A re-run of the stage with the
same inputs reuses every trainer whose `done.json` carries the expected key, so a crash in the
third seed keeps the first two. The key covers the stage's inputs, the trainer and the seed
(the inputs fix the BC policy PPO and the episode trainer start from). An agent/ folder written
from other inputs is emptied first.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from discourse_rl.core import rules
from discourse_rl.core.common import DiscourseRLError, atomic_write_text
from discourse_rl.core.data import Corpus
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.records import HeldOutScore, TrainedPolicy
from discourse_rl.decoders.segments import EssaySegments

DONE_FORMAT = 1


@dataclass(frozen=True)
class FinishedTrainer:
    """What one trainer of one seed made: enough to skip it when the stage runs again."""

    trainer: str
    seed: int
    key: str
    """The key of its inputs (the stage's inputs, the trainer and the seed)."""
    seconds: float
    """Wall time of the training call."""
    heldout: HeldOutScore
    stats: Mapping[str, Any]
    """The trainer's own figures (PPO's env_steps and steps_per_second)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": DONE_FORMAT,
            "trainer": self.trainer,
            "seed": self.seed,
            "key": self.key,
            "seconds": self.seconds,
            "heldout": self.heldout.to_json(),
            "stats": {k: v for k, v in self.stats.items() if isinstance(v, (int, float, str))},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FinishedTrainer:
        return cls(
            str(d["trainer"]),
            int(d["seed"]),
            str(d["key"]),
            float(d["seconds"]),
            HeldOutScore.from_json(d["heldout"]),
            dict(d["stats"]),
        )


def digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def inputs_key(
    segs: Sequence[EssaySegments],
    corpus: Corpus,
    train_ids: Sequence[str],
    test_ids: Sequence[str],
    configs: Sequence[Any],
) -> str:
    """Everything the trainers see: the segments (features and gold actions), the labels the
    reward compares with, the split and the settings (dataclasses)."""
    h = hashlib.sha256()
    for s in segs:
        h.update(s.essay_id.encode())
        for arr in (s.word_start, s.word_end, s.features, s.gold_action):
            if arr is not None:
                h.update(str(arr.dtype).encode() + str(arr.shape).encode())
                h.update(arr.tobytes())
    # Every setting, runtime ones too, a split table's under its old flat names (`rules.plain`).
    plain = [rules.plain(c) for c in configs]
    return digest(h.hexdigest(), corpus.content_key(), list(train_ids), list(test_ids), plain)


class AgentResume:
    """The agent folder of one set of inputs: reuses finished trainers, records new ones."""

    def __init__(self, lay: RunLayout, key: str) -> None:
        self.lay = lay
        self.key = key

    @classmethod
    def open(cls, lay: RunLayout, key: str) -> AgentResume:
        """Keep agent/ when it was written from the same inputs, else start it empty (no
        policy of an earlier configuration survives to be served by `predict`)."""
        marker = lay.agent_inputs
        same = False
        if marker.is_file():
            try:
                same = json.loads(marker.read_text(encoding="utf-8")).get("key") == key
            except (OSError, ValueError, AttributeError):
                same = False
        if not same and lay.agent.exists():
            # The marker goes first: a crash mid-removal then still wipes on the next run.
            marker.unlink(missing_ok=True)
            shutil.rmtree(lay.agent)
        if not same:
            atomic_write_text(marker, json.dumps({"key": key}) + "\n")
        return cls(lay, key)

    def trainer_key(self, trainer: str, seed: int) -> str:
        # The stage's inputs fix the BC policy PPO and the episode trainer start from.
        return digest(self.key, trainer, seed)

    def finished(self, trainer: str, k: int, seed: int, key: str) -> FinishedTrainer | None:
        """The trainer's record if it finished from these inputs and its policy is there."""
        done = self.lay.trainer_done(trainer, k, seed)
        if not done.is_file() or not self.lay.policy(trainer, k, seed).is_file():
            return None
        try:
            rec = FinishedTrainer.from_json(json.loads(done.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return rec if rec.key == key and rec.trainer == trainer and rec.seed == seed else None

    def run(
        self,
        trainer: str,
        k: int,
        seed: int,
        train: Callable[[], TrainedPolicy],
        score: Callable[[Path], HeldOutScore],
        log: Callable[[str], None] = print,
    ) -> FinishedTrainer:
        """The finished trainer: reused when its record matches, else trained, scored and
        recorded (the record is the last file written, so a crash leaves none)."""
        key = self.trainer_key(trainer, seed)
        rec = self.finished(trainer, k, seed, key)
        if rec is not None:
            log(f"[agent] seed {seed}: {trainer} finished earlier, reusing it")
            return rec
        # What an interrupted attempt left (its record first, then checkpoints such as best.pt
        # that the trainer would otherwise find) goes: the trainer starts from nothing.
        done = self.lay.trainer_done(trainer, k, seed)
        done.unlink(missing_ok=True)
        shutil.rmtree(self.lay.trainer_dir(trainer, k, seed), ignore_errors=True)
        t0 = time.perf_counter()
        made = train()
        seconds = time.perf_counter() - t0
        if made.path != self.lay.policy(trainer, k, seed):
            raise DiscourseRLError(f"{made.path}: {trainer} saved its policy elsewhere")
        rec = FinishedTrainer(trainer, seed, key, seconds, score(made.path), made.stats)
        atomic_write_text(done, json.dumps(rec.to_json(), indent=2, allow_nan=False) + "\n")
        return rec
