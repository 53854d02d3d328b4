"""Speed of the agent stage: raw env steps/s, policy-driven steps/s, BC epoch, PPO steps/s.

Runs on simulated word probabilities, so it needs no trained NER:

    .venv/bin/python -m benchmarks.agent_speed                 # embedded sample, ~1 minute
    .venv/bin/python -m benchmarks.agent_speed --data ../shared/data/feedback-prize-2021 \\
        --essays 2000 --ppo-steps 20000 [--json]
    .venv/bin/python -m benchmarks.agent_speed --essays 20 --env-steps 500 --policy-steps 5 \\
        --ppo-steps 64 --json                                  # seconds: does it still run

Measures, on `--essays` essays: simulating the probabilities and cutting segments; the
environment alone under random allowed actions (`--env-steps`); the BC-initialised policy
driving the SB3 vectorised environments (`--policy-steps` steps of all envs); one-pass greedy
decoding of every essay; one BC epoch; and PPO rollouts + updates for `--ppo-steps` env steps.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import run_benchmark
from discourse_rl.core.data import load_corpus
from discourse_rl.decoders.agent import FineTuneInputs, train_bc, train_ppo
from discourse_rl.decoders.agent.common import torch_threads
from discourse_rl.decoders.agent.config import AgentConfig, BcConfig, NetworkConfig, PpoConfig
from discourse_rl.decoders.agent.env import SegmentLabelEnv, gold_table
from discourse_rl.decoders.agent.policy import make_policy, predict_actions
from discourse_rl.decoders.agent.ppo import make_env
from discourse_rl.decoders.segments import (
    SegmentConfig,
    make_segments,
    segment_gold_actions,
    simulate_word_probs,
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="Kaggle-layout folder (sample)")
    ap.add_argument("--essays", type=int, default=300)
    ap.add_argument("--env-steps", type=int, default=20_000, help="random steps, env alone")
    ap.add_argument("--policy-steps", type=int, default=300, help="vectorised policy steps")
    ap.add_argument("--ppo-steps", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=1)
    run_benchmark(ap, measure, argv)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"benchmark": "agent_speed", "threads": args.threads}
    corpus = load_corpus(args.data)
    ids = sorted(corpus.essays)[: args.essays]
    corpus = corpus.subset(ids)
    out["essays"] = len(ids)
    t = time.perf_counter()
    probs = simulate_word_probs(corpus, 0.5, 0)
    out["simulate_s"] = time.perf_counter() - t
    print(f"simulate probabilities: {out['simulate_s']:.1f} s for {len(ids)} essays")
    t = time.perf_counter()
    segs = segment_gold_actions(make_segments(probs, SegmentConfig()), corpus)
    out["segments_s"] = time.perf_counter() - t
    n_seg = np.array([s.n_segments for s in segs])
    out["segments_per_essay"] = float(n_seg.mean())
    print(
        f"segments + gold: {out['segments_s']:.1f} s; "
        f"{n_seg.mean():.1f} segments/essay (max {n_seg.max()})"
    )

    env = SegmentLabelEnv(segs, gold_table(corpus, ids), NetworkConfig().max_segments)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    t, n = time.perf_counter(), args.env_steps
    for _ in range(n):
        _, _, done, _, _ = env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
        if done:
            env.reset()
    out["env_steps_per_s"] = n / (time.perf_counter() - t)
    print(f"env alone (random allowed actions): {out['env_steps_per_s']:,.0f} steps/s")

    cfg = AgentConfig(
        progress_bar=False,
        torch_threads=args.threads,
        bc=BcConfig(epochs=1),
        ppo=PpoConfig(timesteps=args.ppo_steps, value_warmup_steps=0, eval_every=10**9),
    )
    with torch_threads(args.threads):
        policy = make_policy(cfg, segs[0].features.shape[1])
        vec = make_env(segs, corpus, cfg)
        obs = vec.reset()
        t, n = time.perf_counter(), args.policy_steps
        for _ in range(n):
            masks = np.stack(vec.env_method("action_masks"))
            with torch.no_grad():
                actions, _ = policy.predict(obs, action_masks=masks)  # type: ignore[arg-type]
            obs, *_ = vec.step(actions)
        out["policy_env_steps_per_s"] = n * cfg.ppo.n_envs / (time.perf_counter() - t)
        rate = out["policy_env_steps_per_s"]
        print(f"policy + {cfg.ppo.n_envs} envs (SB3 predict): {rate:,.0f} steps/s")
        t = time.perf_counter()
        predict_actions(policy, segs)
        out["decode_essays_per_s"] = len(segs) / (time.perf_counter() - t)
        print(f"one-pass decoding: {out['decode_essays_per_s']:,.0f} essays/s")

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        bc = train_bc(segs, cfg, Path(tmp) / "bc").path
        out["bc_epoch_s"] = time.perf_counter() - t
        print(f"BC: {out['bc_epoch_s']:.1f} s per epoch over {len(segs)} essays")
        t = time.perf_counter()
        train_ppo(FineTuneInputs(segs, corpus, bc, Path(tmp) / "ppo"), cfg)
        dt = time.perf_counter() - t
        out.update(ppo_steps=args.ppo_steps, ppo_s=dt, ppo_env_steps_per_s=args.ppo_steps / dt)
        print(f"PPO (rollouts + updates): {args.ppo_steps / dt:,.0f} env steps/s ({dt:.0f} s)")
    out["load"] = os.getloadavg()
    print(f"torch threads: {args.threads}; machine load: {Path('/proc/loadavg').read_text()}")
    return out


if __name__ == "__main__":
    main()
