"""The `[ner_rl]` table: settings of the tagger's RL phase (`ner.rl`), free of torch so that a
run config loads without it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from discourse_rl.core import rules

Sampler = Literal["masked", "lattice"]
Baseline = Literal["rloo", "greedy"]
Reward = Literal["macro", "f1", "jaccard"]
Feeds = Literal["ce", "rl", "control"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)
BASELINES: tuple[str, ...] = get_args(Baseline)
RL_REWARDS: tuple[str, ...] = get_args(Reward)
FEEDS: tuple[str, ...] = get_args(Feeds)


@dataclass(frozen=True)
class NerRlConfig:
    """Settings of the RL phase of the tagger (the `[ner_rl]` table of a run config)."""

    enabled: bool = False
    """Train each fold model by RL after its cross-entropy epochs ('finetune' mode only)."""
    steps: int = 200
    """Updates per fold (each over `batch_essays` essays); `max_seconds` may stop it earlier."""
    max_seconds: float = 0.0
    """Training wall time per fold at which the phase stops (0 = no limit); evaluations and
    checkpoints are not counted."""
    batch_essays: int = 8
    """Essays per update."""
    samples: int = 8
    """K: label sequences sampled per essay from one forward pass."""
    temperature: float = 1.0
    """Sampling temperature: the sequences are drawn from (and their log-probabilities taken
    under) each word's distribution raised to 1 / temperature and renormalised; below 1 the
    samples stay closer to the argmax that is deployed. The KL term reads the untempered one."""
    sampler: Sampler = "masked"
    """'masked': word by word under the valid-transition mask; 'lattice': forward filtering,
    backward sampling over the constrained decoder's lattice (its at-most-one limits)."""
    baseline: Baseline = "rloo"
    """'rloo': the mean reward of the essay's other K - 1 samples; 'greedy': the reward of the
    essay's greedy sequence (self-critical: masked argmax, or the constrained Viterbi)."""
    reward: Reward = "macro"
    """'macro': the essay's first-order share of the corpus macro F1; 'f1': its F-score;
    'jaccard': the seed's TP / (TP + FP + FN) (`core.rewards`)."""
    kl_beta: float = 0.05
    """Weight of the KL(policy || cross-entropy tagger) of every word, summed over the essay
    like the sequence's log-probability."""
    ce_weight: float = 0.0
    """Weight of a cross-entropy term on the true labels, summed over the essay's words."""
    lr: float = 1e-5
    """Learning rate of the unfrozen encoder layers (AdamW; warm-up, then constant)."""
    head_lr: float = 1e-4
    """Learning rate of the head (0 = `lr`)."""
    warmup_steps: int = 10
    """Updates of linear warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    macro_momentum: float = 0.95
    """Moving-average momentum of the class statistics behind the 'macro' reward."""
    unique_share: float = 0.99
    """'lattice': a class gets at most one span when this share of training essays has <= 1
    (as `[constrained]`)."""
    max_unique: int = 3
    """'lattice': at most this many limited classes."""
    eval_every: int = 50
    """Updates between evaluations of the policy's naive macro F1 on `eval_essays` of the
    fold's held-out essays (curves only: nothing is selected on them)."""
    eval_essays: int = 100
    """Held-out essays of the fold scored for the curves (0 = no evaluation)."""
    save_every: int = 50
    """Updates between checkpoints (the phase resumes from the last one)."""
    control: bool = False
    """Also train the honest control: cross-entropy from the same checkpoint for the wall time
    the fold's RL phase took."""
    score_train_essays: int = 0
    """Training essays of the run's protocol (a seeded draw) that get the arms' probabilities
    besides its held-out essays; the tuned rows' minima are fitted on them (0 = every essay:
    what `feeds` needs)."""
    feeds: Feeds = "ce"
    """Whose word probabilities the later stages (spans, agent) read: 'ce' (the cross-entropy
    tagger), 'rl' or 'control'."""

    def __post_init__(self) -> None:
        rules.check_fields(
            self,
            {
                "steps": rules.positive,
                "max_seconds": rules.non_negative,
                "batch_essays": rules.positive,
                "samples": rules.positive,
                "kl_beta": rules.non_negative,
                "temperature": rules.positive,
                "score_train_essays": rules.non_negative,
                "ce_weight": rules.non_negative,
                "lr": rules.positive,
                "head_lr": rules.non_negative,
                "warmup_steps": rules.non_negative,
                "weight_decay": rules.non_negative,
                "macro_momentum": rules.below_one,
                "unique_share": rules.probability,
                "max_unique": rules.non_negative,
                "eval_every": rules.positive,
                "eval_essays": rules.non_negative,
                "save_every": rules.positive,
            },
        )
        for name, value, allowed in (
            ("sampler", self.sampler, SAMPLERS),
            ("baseline", self.baseline, BASELINES),
            ("reward", self.reward, RL_REWARDS),
            ("feeds", self.feeds, FEEDS),
        ):
            if value not in allowed:
                raise rules.ConfigValueError(name, value, f"must be one of {allowed}")
        if self.feeds != "ce" and self.score_train_essays:
            raise rules.ConfigValueError(
                "score_train_essays",
                self.score_train_essays,
                f"must be 0 (every essay) when feeds = {self.feeds!r}",
            )
        if self.feeds == "control" and not self.control:
            raise rules.ConfigValueError("feeds", self.feeds, "needs control = true")
        if self.baseline == "rloo" and self.samples < 2:
            raise rules.ConfigValueError("samples", self.samples, "must be >= 2 with 'rloo'")

    def identity(self) -> dict[str, Any]:
        """What the RL models depend on (not how often they are evaluated or saved, nor which
        tagger later stages read)."""
        out = asdict(self)
        drop = ("eval_every", "eval_essays", "save_every", "control", "feeds", "enabled")
        for k in (*drop, "score_train_essays"):
            out.pop(k)
        return out
