"""The agent's trainers as registered decoders: each labels an essay's candidate segments with
its saved attention policy (RUN/agent/<trainer>/policy.pt, segmentation from
RUN/agent/segments.toml)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from discourse_rl.core.common import DiscourseRLError, config_from_dict, load_toml
from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders.registry import Decoder, Span, register, sorted_spans

if TYPE_CHECKING:  # types only
    from discourse_rl.core.arrays import Probs
    from discourse_rl.core.data import Essay
    from discourse_rl.core.records import AgentResults


class PolicyDecoder(Decoder):
    """A policy trained by one of the agent stage's trainers (the first seed's)."""

    step = "agent"

    model: tuple[Any, Any]
    """The segmentation settings and the policy."""

    @classmethod
    def path(cls, lay: RunLayout) -> Path:
        return lay.policy(cls.name)

    @classmethod
    def saved(cls, lay: RunLayout) -> Path | None:
        # The policy labels the segments its settings cut: both must be there.
        return super().saved(lay) if lay.segments_config.is_file() else None

    @classmethod
    def files(cls, lay: RunLayout) -> list[Path]:
        return [lay.segments_config, lay.policy(cls.name)]

    @classmethod
    def seconds(cls, step_seconds: float | None, results: AgentResults | None) -> float | None:
        if results is None or not results.seeds:
            return None
        per_seed = [getattr(r, f"{cls.name}_seconds") for r in results.seeds]
        return None if any(s is None for s in per_seed) else float(sum(per_seed))

    @classmethod
    def load(cls, run: Path) -> Self:
        # torch: loaded only when a policy is
        from discourse_rl.decoders.agent.policy import load_policy
        from discourse_rl.decoders.segments import SegmentConfig

        lay = RunLayout(run)
        path, policy = lay.segments_config, lay.policy(cls.name)
        if not path.is_file():
            raise DiscourseRLError(f"{lay.root}: no trained agent (missing {path}; train-agent)")
        if not policy.is_file():
            raise DiscourseRLError(
                f"{lay.root}: no {cls.name} policy in this run (missing {policy})"
            )
        seg_cfg = config_from_dict(SegmentConfig, load_toml(path), where=str(path))
        return cls((seg_cfg, load_policy(policy)))

    def predict(self, probs: Probs, essays: Mapping[str, Essay]) -> dict[str, list[Span]]:
        # torch: the policy's forward pass
        from discourse_rl.decoders.agent.policy import predict_actions
        from discourse_rl.decoders.segments import actions_to_spans, make_segments, paragraph_starts

        out: dict[str, list[Span]] = {k: [] for k in probs}
        if not probs:
            return out
        seg_cfg, policy = self.model
        words = {k: e.words for k, e in essays.items()}
        paras = paragraph_starts(essays, list(probs)) if seg_cfg.rich_features else None
        segs = make_segments(probs, seg_cfg, list(probs), words, paras)
        for seg, act in zip(segs, predict_actions(policy, segs), strict=True):
            out[seg.essay_id] = sorted_spans(*actions_to_spans(seg, act))
        return out


@register
class BcDecoder(PolicyDecoder):
    name = "bc"
    trained_on = "the training essays' segments, cloning the best labelling (BC)"
    title = "attention policy over segments, cloned from the gold actions"


@register
class PpoDecoder(PolicyDecoder):
    name = "ppo"
    trained_on = "the BC policy, fine-tuned by PPO on the metric"
    title = "RL: PPO + KL to the BC policy (SB3)"


@register
class EpisodeDecoder(PolicyDecoder):
    name = "episode"
    trained_on = "the BC policy, fine-tuned on whole-essay rewards"
    title = "RL: episode-level trainer (RLOO + KL to the BC policy)"
