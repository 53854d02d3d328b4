"""PPO fine-tuning (sb3-contrib MaskablePPO) from the cloned policy, held near it by a KL penalty.

As in "Learning to summarize from human feedback", each step's reward is lowered by beta times
the KL divergence between the current policy and the frozen BC policy at that state (exact, over
the allowed actions; `reward.kl_to_reference`); gamma is 1, so an episode's return is the essay's
score minus beta times the summed KL. Beta is fixed, or adapted towards a target KL per step. The
penalty is applied when a rollout ends, before PPO's update: the buffer's rewards are lowered and
its returns and advantages recomputed. Cloning leaves the value head untrained, so PPO first runs
`value_warmup_steps` with everything but the value head frozen.

SB3 sees the plain `AttentionPolicy` through `SB3Policy`, this module's only tie to it: the
features extractor runs the encoder and picks the output row of the segment being labelled, and
the policy's own action and value heads turn it into logits and a value.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

from discourse_rl.core.common import atomic_write_text, config_to_toml, progress
from discourse_rl.core.data import Corpus
from discourse_rl.core.records import TrainedPolicy
from discourse_rl.decoders.agent.common import FineTuneInputs, torch_threads
from discourse_rl.decoders.agent.config import AgentConfig
from discourse_rl.decoders.agent.env import SegmentLabelEnv
from discourse_rl.decoders.agent.policy import (
    AttentionPolicy,
    PolicyConfig,
    keep_best,
    load_policy,
    predict_actions,
    save_policy,
    score_policy,
)
from discourse_rl.decoders.agent.reward import (
    essay_counts,
    essay_reward,
    gold_table,
    kl_to_reference,
)
from discourse_rl.decoders.segments import N_ACTIONS, EssaySegments


class _Progress(BaseCallback):
    """PPO's progress through `common.progress`: a bar on a terminal, periodic lines in a log
    file (SB3's own bar draws with rich, unreadable in a log)."""

    def __init__(self, total: int, desc: str) -> None:
        super().__init__()
        self.total, self.desc = total, desc
        self.bar: Any = None

    def _on_training_start(self) -> None:
        self.bar = progress(total=self.total, desc=self.desc, unit="step")

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


def _bar(cfg: AgentConfig, total: int, desc: str) -> list[BaseCallback]:
    return [_Progress(total, desc)] if cfg.progress_bar else []


class SegmentExtractor(BaseFeaturesExtractor):
    """SB3 features extractor: the encoder's output at the observation's current segment."""

    def __init__(self, observation_space: spaces.Dict, net: AttentionPolicy) -> None:
        super().__init__(observation_space, features_dim=net.config.d_model)
        self.net = net

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        mask = observations["mask"] > 0.5
        # SB3 hands a Discrete observation over one-hot encoded.
        pos = observations["position"].flatten(1).argmax(1)
        # Attention needs only the longest essay in the batch, not the full padding.
        n = int(max(int(mask.sum(1).max()), int(pos.max()) + 1))
        h = self.net.encoder(observations["features"][:, :n], mask[:, :n])
        out: torch.Tensor = h[torch.arange(h.shape[0], device=h.device), pos]
        return out


class SB3Policy(MaskableActorCriticPolicy):
    """MaskablePPO's view of a plain `AttentionPolicy` (`net`): same modules, same weights.

    Give either `config` (a fresh policy, created before SB3 builds anything else, so the seed
    draws the same weights as before) or `net` (wrap an existing one).
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any],
        lr_schedule: Any,
        config: PolicyConfig | None = None,
        net: AttentionPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        if net is None:
            if config is None:
                raise ValueError("SB3Policy needs a config or a net")
            net = AttentionPolicy(config)
        if net.head is not None:
            raise ValueError("PPO fine-tunes plain policies only (this one has a head)")
        kwargs.update(
            net_arch=[],
            ortho_init=False,
            features_extractor_class=SegmentExtractor,
            features_extractor_kwargs={"net": net},
        )
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    @property
    def net(self) -> AttentionPolicy:
        net = self.features_extractor.net
        assert isinstance(net, AttentionPolicy)
        return net

    def _build(self, lr_schedule: Any) -> None:
        # SB3 would create new action and value layers here; the plain policy has them already.
        self._build_mlp_extractor()
        self.action_net = self.net.action_net
        self.value_net = self.net.value_net
        lr = lr_schedule(1)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr, **self.optimizer_kwargs)  # type: ignore[call-arg]


def policy_kl(
    policy: MaskableActorCriticPolicy,
    ref: MaskableActorCriticPolicy,
    obs: dict[str, torch.Tensor],
    masks: torch.Tensor,
) -> torch.Tensor:
    """KL(policy || ref) per observation over the allowed actions."""
    # SB3's masked logits are normalised log-probabilities, very negative where masked.
    dist_p: Any = policy.get_distribution(obs, masks.numpy())
    dist_q: Any = ref.get_distribution(obs, masks.numpy())
    return kl_to_reference(dist_p.distribution.logits, dist_q.distribution.logits, masks)


class KLPenalty(BaseCallback):
    """Lowers each step's reward by beta * KL(policy || BC) once a rollout is collected."""

    def __init__(self, ref: SB3Policy, beta: float, target: float, horizon: int = 10_000):
        super().__init__()
        self.ref = ref
        self.beta = beta
        self.target = target
        self.horizon = horizon
        self.last_kl = 0.0

    def _on_step(self) -> bool:
        return True

    @torch.no_grad()
    def _on_rollout_end(self) -> None:
        model: Any = self.model
        buf = model.rollout_buffer
        obs_all = {k: v.reshape(-1, *v.shape[2:]) for k, v in buf.observations.items()}  # type: ignore[union-attr]
        masks_all = buf.action_masks.reshape(-1, N_ACTIONS) > 0.5  # type: ignore[attr-defined]
        model.policy.set_training_mode(False)
        kls = []
        for k in range(0, masks_all.shape[0], 1024):
            obs = obs_as_tensor({n: v[k : k + 1024] for n, v in obs_all.items()}, model.device)
            m = torch.from_numpy(masks_all[k : k + 1024])
            kls.append(policy_kl(model.policy, self.ref, obs, m))  # type: ignore[arg-type]
        kl = torch.cat(kls).numpy().reshape(buf.rewards.shape)
        self.last_kl = float(kl.mean())
        buf.rewards -= self.beta * kl
        last_obs = obs_as_tensor(model._last_obs, model.device)  # type: ignore[arg-type]
        last_values = model.policy.predict_values(last_obs)  # type: ignore[arg-type,operator]
        buf.compute_returns_and_advantage(last_values, model._last_episode_starts)  # type: ignore[arg-type]
        self.logger.record("kl/kl_to_bc", self.last_kl)
        self.logger.record("kl/beta", self.beta)
        if self.target > 0:
            err = float(np.clip(self.last_kl / self.target - 1.0, -0.2, 0.2))
            self.beta *= 1.0 + err * kl.size / self.horizon


class HeldOutEval(BaseCallback):
    """Scores the deterministic policy on held-out essays every few rollouts; keeps the best."""

    def __init__(
        self,
        segs: Sequence[EssaySegments],
        corpus: Corpus | None,
        every: int,
        out_dir: Path,
    ) -> None:
        super().__init__()
        self.segs, self.corpus, self.every = segs, corpus, every
        self.out_dir = out_dir
        self.enabled = False
        self.rollouts = 0
        self.best = -np.inf
        self.history: list[dict[str, float]] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self.enabled and self.rollouts % self.every == 0:
            self.evaluate()
        self.rollouts += 1

    def evaluate(self) -> None:
        sb3: SB3Policy = self.model.policy  # type: ignore[assignment]
        policy = sb3.net
        step = int(self.model.num_timesteps)
        save_policy(policy, self.out_dir / "last.pt")
        if not self.segs or self.corpus is None:
            return
        f1 = score_policy(policy, self.segs, self.corpus).macro_f1
        self.history.append({"step": step, "val_macro_f1": f1})
        if hasattr(self.model, "_logger"):  # absent before the first learn()
            self.logger.record("eval/val_macro_f1", f1)
        if f1 > self.best:
            self.best = f1
            save_policy(policy, self.out_dir / "best.pt")


def mean_reward(
    policy: AttentionPolicy, segs: Sequence[EssaySegments], corpus: Corpus, kind: str
) -> float:
    """Mean essay reward of the policy's deterministic actions."""
    gold = gold_table(corpus, [s.essay_id for s in segs])
    pairs = zip(segs, predict_actions(policy, segs), strict=True)
    counts = [essay_counts(s, a, gold[s.essay_id]) for s, a in pairs]
    return float(np.mean([essay_reward(c, kind) for c in counts]))


def make_env(segs: Sequence[EssaySegments], corpus: Corpus, cfg: AgentConfig) -> VecMonitor:
    gold = gold_table(corpus, [s.essay_id for s in segs])
    fns = [
        (lambda: SegmentLabelEnv(segs, gold, cfg.network.max_segments, cfg.ppo.reward))
        for _ in range(cfg.ppo.n_envs)
    ]
    return VecMonitor(DummyVecEnv(fns))  # type: ignore[arg-type]


def train_ppo(inputs: FineTuneInputs, cfg: AgentConfig) -> TrainedPolicy:
    """Fine-tune the BC policy `inputs.bc_path` on the training essays; returns what it saved.

    The returned policy is the checkpoint with the best validation macro F1 (the BC policy
    itself counts as the first checkpoint), or the last one without validation essays.
    """
    with torch_threads(cfg.torch_threads):
        return _train_ppo(inputs, cfg)


def _train_ppo(inputs: FineTuneInputs, cfg: AgentConfig) -> TrainedPolicy:
    out_dir = inputs.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    env = make_env(inputs.train_segs, inputs.corpus, cfg)
    n_features = int(inputs.train_segs[0].features.shape[1])
    model = MaskablePPO(
        SB3Policy,
        env,
        learning_rate=cfg.ppo.lr,
        n_steps=cfg.ppo.n_steps,
        batch_size=cfg.ppo.batch_size,
        n_epochs=cfg.ppo.n_epochs,
        gamma=1.0,
        gae_lambda=cfg.ppo.gae_lambda,
        clip_range=cfg.ppo.clip_range,
        ent_coef=cfg.ppo.ent_coef,
        vf_coef=cfg.ppo.vf_coef,
        policy_kwargs={"config": PolicyConfig.of(cfg.network, n_features)},
        tensorboard_log=None if inputs.tb_dir is None else str(inputs.tb_dir),
        seed=cfg.seed,
        device="cpu",
    )
    bc = load_policy(inputs.bc_path)
    policy: SB3Policy = model.policy  # type: ignore[assignment]
    policy.net.load_state_dict(bc.state_dict())
    bc.requires_grad_(False)
    ref = SB3Policy(model.observation_space, model.action_space, model.lr_schedule, net=bc)
    ref.set_training_mode(False)
    kl_cb = KLPenalty(ref, cfg.ppo.kl_beta, cfg.ppo.kl_target)
    eval_cb = HeldOutEval(inputs.val_segs, inputs.corpus, cfg.ppo.eval_every, out_dir)
    eval_cb.init_callback(model)
    eval_cb.evaluate()  # the BC policy's own score, the bar PPO has to clear
    callbacks = [kl_cb, eval_cb]

    # The value head starts at the BC policy's mean reward, a far better first guess than a
    # random projection; the warm-up then fits it at its own, larger learning rate.
    with torch.no_grad():
        model.policy.value_net.weight.zero_()
        model.policy.value_net.bias.fill_(
            mean_reward(bc, inputs.train_segs, inputs.corpus, cfg.ppo.reward)
        )
    if cfg.ppo.value_warmup_steps > 0:
        value_head = set(id(p) for p in model.policy.value_net.parameters())
        for p in model.policy.parameters():
            p.requires_grad_(id(p) in value_head)
        model.lr_schedule = lambda _: cfg.ppo.value_warmup_lr  # type: ignore[assignment]
        model.learn(
            cfg.ppo.value_warmup_steps,
            callback=[*callbacks, *_bar(cfg, cfg.ppo.value_warmup_steps, "PPO value warm-up")],
            tb_log_name="ppo",
        )
        model.lr_schedule = lambda _: cfg.ppo.lr  # type: ignore[assignment]
        for p in model.policy.parameters():
            p.requires_grad_(True)
    warm_s = time.perf_counter() - t0
    eval_cb.enabled = True
    model.learn(
        cfg.ppo.timesteps,
        callback=[*callbacks, *_bar(cfg, cfg.ppo.timesteps, "PPO")],
        tb_log_name="ppo",
        reset_num_timesteps=cfg.ppo.value_warmup_steps <= 0,
    )
    eval_cb.evaluate()
    seconds = time.perf_counter() - t0

    final = keep_best(out_dir)
    atomic_write_text(out_dir / "config.toml", config_to_toml(cfg))
    summary: dict[str, Any] = {
        "seconds": seconds,
        "warmup_seconds": warm_s,
        "env_steps": int(model.num_timesteps),
        "steps_per_second": model.num_timesteps / seconds,
        "final_beta": kl_cb.beta,
        "final_kl": kl_cb.last_kl,
        "best_val_macro_f1": None if not np.isfinite(eval_cb.best) else eval_cb.best,
        "history": eval_cb.history,
    }
    atomic_write_text(out_dir / "history.json", json.dumps(summary, indent=2))
    return TrainedPolicy.from_summary("ppo", final, summary)
