"""agent-gbdt as a registered decoder with a step of its own: the agent on top of gbdt
(`agent.on_gbdt`), trained in a run when `[decoders.agent-gbdt] enabled = true`.

Its fit, on the protocol's training essays and the run's word probabilities: gbdt with the
run's `[gbdt]` settings and the seed (the same model the gbdt step fits for that seed); gbdt's
scores and labelling of the training essays cross-fitted (`cross_fit_gbdt`); segments cut also
at gbdt's span edges, with gbdt's inputs appended (`gbdt_segments`, the run's `[segments]`);
BC cloning gbdt's labelling (or the true one) with the run's `[agent]`; then the episode
trainer on the metric with the KL to that start (the run's `[episode]`). RUN/agent-gbdt/ holds
the gbdt model (gbdt/), the segmentation (segments.toml) and the policy (policy.pt).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from discourse_rl.core import rules
from discourse_rl.core.common import DiscourseRLError, config_from_dict, load_toml
from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders.registry import Decoder, RunContext, Span, register, sorted_spans

if TYPE_CHECKING:  # types only
    from discourse_rl.core.arrays import Probs
    from discourse_rl.core.data import Corpus, Essay

NAME = "agent-gbdt"
CLONES = ("gbdt", "gold")


@dataclass(frozen=True)
class AgentGbdtConfig:
    """`[decoders.agent-gbdt]`: the agent on top of gbdt (its own step, RUN/agent-gbdt/)."""

    enabled: bool = False
    """Train it in the run (off: the step is skipped and RUN/agent-gbdt/ removed)."""
    clone: str = "gbdt"
    """What BC clones: gbdt's cross-fitted labelling of the training essays, or 'gold'."""
    cross_fit_folds: int = 2
    """Inner folds giving the training essays gbdt's scores and labelling out of fold."""
    bc_epochs: int = 0
    """BC epochs (0: the run's [agent] bc_epochs)."""
    passes: float = 0.0
    """The episode trainer's passes over the training essays (0: the run's [episode] passes)."""
    all_seeds: bool = False
    """Fit once per seed of agent_seeds (the row is their mean); else the first seed alone."""

    def __post_init__(self) -> None:
        table = f"decoders.{NAME}"
        if self.clone not in CLONES:
            raise rules.ConfigValueError("clone", self.clone, f"one of {CLONES}", table=table)
        if self.cross_fit_folds < 2:
            raise rules.ConfigValueError(
                "cross_fit_folds", self.cross_fit_folds, "at least 2", table=table
            )
        for key, value in (("bc_epochs", self.bc_epochs), ("passes", self.passes)):
            if value < 0:
                raise rules.ConfigValueError(key, value, "must be >= 0 (0: the run's)", table=table)


def policy_capacity(agent_max: int, segments_max: int, longest: int) -> int:
    """Segment rows of the policy: cut points and gbdt's span edges may exceed the segments'
    own cap, so room for four times it (and for the longest training essay)."""
    return max(agent_max, 4 * segments_max, longest)


@register
class AgentGbdtDecoder(Decoder):
    """The episode trainer's policy over segments that read gbdt's scores and labelling."""

    name = NAME
    step = NAME
    trained_on = "gbdt's cross-fitted scores as segment inputs, BC from its labelling, then RL"
    title = "RL on top of gbdt: gbdt's scores as segment inputs, BC from its labelling, episode RL"
    config = AgentGbdtConfig

    model: tuple[Any, Any, Any, Path | None]
    """The segmentation settings, gbdt's model, the policy, and the policy file a fit wrote."""

    @classmethod
    def path(cls, lay: RunLayout) -> Path:
        return lay.decoder(cls.name)

    @classmethod
    def marker(cls, lay: RunLayout) -> Path:
        return lay.decoder(cls.name) / "policy.pt"

    @classmethod
    def saved(cls, lay: RunLayout) -> Path | None:
        folder = lay.decoder(cls.name)
        ok = (folder / "gbdt" / "params.json").is_file() and (folder / "segments.toml").is_file()
        return super().saved(lay) if ok else None

    @classmethod
    def run_settings(cls, settings: Any) -> Any:
        return (settings.gbdt, settings.segments, settings.agent, settings.episode)

    @classmethod
    def seeds(cls, config: Any, agent_seeds: Any) -> tuple[int, ...]:
        seeds = tuple(int(s) for s in agent_seeds)
        return seeds if config.all_seeds else seeds[:1]

    @classmethod
    def fit_in_run(
        cls, probs: Probs, corpus: Corpus, config: Any, seed: int, run: RunContext
    ) -> Self:
        s = run.settings
        return cls.fit_with(
            probs, corpus, config, seed, run.scratch, (s.gbdt, s.segments, s.agent, s.episode)
        )

    @classmethod
    def fit_with(
        cls,
        probs: Probs,
        corpus: Corpus,
        config: AgentGbdtConfig,
        seed: int,
        scratch: Path,
        settings: tuple[Any, Any, Any, Any],
    ) -> Self:
        """Fit on every essay of `probs` (all in `corpus`) with the run's `[gbdt]`,
        `[segments]`, `[agent]` and `[episode]` (`settings`); trainers write under `scratch`."""
        # torch, lightgbm, pandas: only when it trains
        from discourse_rl.decoders.agent.bc import train_bc
        from discourse_rl.decoders.agent.common import FineTuneInputs, split_validation
        from discourse_rl.decoders.agent.episode import train_episode
        from discourse_rl.decoders.agent.on_gbdt import cross_fit_gbdt, gbdt_segments, with_actions
        from discourse_rl.decoders.agent.policy import load_policy
        from discourse_rl.decoders.gbdt.gbdt import fit_table, training_table
        from discourse_rl.decoders.segments import paragraph_starts

        gbdt_cfg, seg_cfg, agent_cfg, episode_cfg = settings
        gcfg = dataclasses.replace(gbdt_cfg, seed=int(seed))
        ids = sorted(probs)
        data = training_table(probs, corpus, ids, gcfg)
        model = fit_table(data, corpus, gcfg)
        view = cross_fit_gbdt(data, corpus, gcfg, config.cross_fit_folds)
        words = {i: corpus.essays[i].words for i in ids}
        segs = gbdt_segments(probs, ids, seg_cfg, words, paragraph_starts(corpus.essays, ids), view)
        segs = with_actions(segs, view if config.clone == "gbdt" else None, corpus)
        longest = max(s.n_segments for s in segs)
        capacity = policy_capacity(agent_cfg.network.max_segments, seg_cfg.max_segments, longest)
        acfg = dataclasses.replace(
            agent_cfg,
            seed=int(seed),
            network=dataclasses.replace(agent_cfg.network, max_segments=capacity),
            bc=dataclasses.replace(agent_cfg.bc, epochs=config.bc_epochs or agent_cfg.bc.epochs),
            progress_bar=False,
        )
        tr, val = split_validation(segs, acfg.val_fraction, acfg.seed)
        bc = train_bc(tr, acfg, scratch / "bc", val_segs=val, corpus=corpus)
        ecfg = dataclasses.replace(
            episode_cfg,
            seed=int(seed),
            passes=config.passes or episode_cfg.passes,
            progress_bar=False,
        )
        inputs = FineTuneInputs(tr, corpus, bc.path, scratch / "episode", val_segs=val)
        ep = train_episode(inputs, ecfg)
        return cls((seg_cfg, model, load_policy(ep.path), ep.path))

    def save(self, folder: Path) -> None:
        # torch: the policy's file is written with it
        from discourse_rl.core.common import atomic_write_text, config_to_toml
        from discourse_rl.decoders.agent.policy import save_policy

        seg_cfg, model, policy, written = self.model
        model.save(folder / "gbdt")
        atomic_write_text(folder / "segments.toml", config_to_toml(seg_cfg))
        if written is not None and Path(written).is_file():
            shutil.copyfile(written, folder / "policy.pt")
        else:
            save_policy(policy, folder / "policy.pt")

    @classmethod
    def load(cls, run: Path) -> Self:
        # torch, lightgbm: loaded only with the model
        from discourse_rl.decoders.agent.policy import load_policy
        from discourse_rl.decoders.gbdt.gbdt import SpanModel
        from discourse_rl.decoders.segments import SegmentConfig

        folder = RunLayout(run).decoder(cls.name)
        seg_path = folder / "segments.toml"
        if not seg_path.is_file():
            raise DiscourseRLError(f"{folder}: no trained agent-gbdt (missing {seg_path})")
        seg_cfg = config_from_dict(SegmentConfig, load_toml(seg_path), where=str(seg_path))
        return cls(
            (seg_cfg, SpanModel.load(folder / "gbdt"), load_policy(folder / "policy.pt"), None)
        )

    def predict(self, probs: Probs, essays: Mapping[str, Essay]) -> dict[str, list[Span]]:
        # torch, lightgbm, pandas: only when it labels
        from discourse_rl.decoders.agent.on_gbdt import gbdt_segments, view_of
        from discourse_rl.decoders.agent.policy import predict_actions
        from discourse_rl.decoders.gbdt.model import build_candidates
        from discourse_rl.decoders.segments import actions_to_spans, paragraph_starts

        out: dict[str, list[Span]] = {k: [] for k in probs}
        if not probs:
            return out
        seg_cfg, model, policy, _ = self.model
        ids = list(probs)
        missing = [i for i in ids if i not in essays]
        if missing:
            raise DiscourseRLError(f"{NAME}: essay {missing[0]!r} has probabilities but no text")
        view = view_of(model, build_candidates(probs, essays, ids, model.cfg, model.limits), essays)
        words = {k: essays[k].words for k in ids}
        segs = gbdt_segments(probs, ids, seg_cfg, words, paragraph_starts(essays, ids), view)
        # An essay cut into more segments than the policy has rows (gbdt's span edges are not
        # capped) keeps gbdt's own labelling.
        rows = policy.config.max_segments
        fits = [seg for seg in segs if seg.n_segments <= rows]
        for seg, act in zip(fits, predict_actions(policy, fits) if fits else [], strict=True):
            out[seg.essay_id] = sorted_spans(*actions_to_spans(seg, act))
        gbdt_spans = view.essay_spans()
        for seg in segs:
            if seg.n_segments > rows and seg.essay_id in gbdt_spans:
                out[seg.essay_id] = sorted_spans(*gbdt_spans[seg.essay_id])
        return out
