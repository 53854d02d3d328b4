"""Speed of the agent stage: raw env steps/s, policy-driven steps/s, BC epoch, PPO steps/s.

Runs on simulated word probabilities, so it needs no trained NER:

    .venv/bin/python benchmarks/agent_speed.py                 # embedded sample, ~1 minute
    .venv/bin/python benchmarks/agent_speed.py --data ../shared/data/feedback-prize-2021 \\
        --essays 2000 --ppo-steps 20000
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from discourse_rl.agent import AgentConfig, train_bc, train_ppo
from discourse_rl.agent.common import torch_threads
from discourse_rl.agent.policy import make_policy, predict_actions
from discourse_rl.agent.ppo import make_env
from discourse_rl.data import load_corpus
from discourse_rl.env import SegmentLabelEnv, gold_table
from discourse_rl.segments import (
    SegmentConfig,
    make_segments,
    segment_gold_actions,
    simulate_word_probs,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--essays", type=int, default=300)
    ap.add_argument("--ppo-steps", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    corpus = load_corpus(args.data)
    ids = sorted(corpus.essays)[: args.essays]
    corpus = corpus.subset(ids)
    t = time.perf_counter()
    probs = simulate_word_probs(corpus, 0.5, 0)
    print(f"simulate probabilities: {time.perf_counter() - t:.1f} s for {len(ids)} essays")
    t = time.perf_counter()
    segs = segment_gold_actions(make_segments(probs, SegmentConfig()), corpus)
    n_seg = np.array([s.n_segments for s in segs])
    print(
        f"segments + gold: {time.perf_counter() - t:.1f} s; "
        f"{n_seg.mean():.1f} segments/essay (max {n_seg.max()})"
    )

    env = SegmentLabelEnv(segs, gold_table(corpus, ids), AgentConfig().max_segments)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    t, n = time.perf_counter(), 20_000
    for _ in range(n):
        _, _, done, _, _ = env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
        if done:
            env.reset()
    print(f"env alone (random allowed actions): {n / (time.perf_counter() - t):,.0f} steps/s")

    cfg = dataclasses.replace(
        AgentConfig(),
        bc_epochs=1,
        ppo_timesteps=args.ppo_steps,
        value_warmup_steps=0,
        eval_every=10**9,
        progress_bar=False,
        torch_threads=args.threads,
    )
    with torch_threads(args.threads):
        policy = make_policy(cfg, segs[0].features.shape[1])
        vec = make_env(segs, corpus, cfg)
        obs = vec.reset()
        t, n = time.perf_counter(), 300
        for _ in range(n):
            masks = np.stack(vec.env_method("action_masks"))
            with torch.no_grad():
                actions, _ = policy.predict(obs, action_masks=masks)  # type: ignore[arg-type]
            obs, *_ = vec.step(actions)
        rate = n * cfg.n_envs / (time.perf_counter() - t)
        print(f"policy + {cfg.n_envs} envs (SB3 predict): {rate:,.0f} steps/s")
        t = time.perf_counter()
        predict_actions(policy, segs)
        print(f"one-pass decoding: {len(segs) / (time.perf_counter() - t):,.0f} essays/s")

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        bc = train_bc(segs, cfg, Path(tmp) / "bc")
        print(f"BC: {time.perf_counter() - t:.1f} s per epoch over {len(segs)} essays")
        t = time.perf_counter()
        train_ppo(segs, corpus, bc, cfg, Path(tmp) / "rl")
        dt = time.perf_counter() - t
        print(f"PPO (rollouts + updates): {args.ppo_steps / dt:,.0f} env steps/s ({dt:.0f} s)")
    print(f"torch threads: {args.threads}; machine load: {Path('/proc/loadavg').read_text()}")


if __name__ == "__main__":
    main()
