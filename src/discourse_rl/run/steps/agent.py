"""The agent stage of a run: segments, then BC, PPO and the episode trainer per seed, trained
on the training essays of the split protocol (`protocol`) and scored on its held-out essays.

Writes RUN/segments.npz and RUN/agent/ (segments.toml, a folder per trainer, later seeds under
agent/seed<s>/, results.json through `records.AgentResults`) and TensorBoard logs under RUN/tb/.
The held-out essays are also decoded by the NER baselines (naive argmax, and the tuned minima
fitted on the training essays' probabilities) so all rows of the table face the same essays.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from discourse_rl.core.arrays import Probs
from discourse_rl.core.common import (
    DiscourseRLError,
    atomic_write_text,
    config_to_toml,
)
from discourse_rl.core.data import Corpus
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.protocol import Split, heldout_score, write_split
from discourse_rl.core.records import (
    ORACLE,
    AgentResults,
    HeldOutScore,
    SeedRecord,
    StageScores,
    TradeoffRow,
    TrainedPolicy,
)
from discourse_rl.decoders import decode
from discourse_rl.decoders.agent import predict_spans
from discourse_rl.decoders.agent.bc import train_bc
from discourse_rl.decoders.agent.common import FineTuneInputs, split_validation
from discourse_rl.decoders.agent.config import AgentConfig
from discourse_rl.decoders.agent.episode import EpisodeConfig, train_episode
from discourse_rl.decoders.agent.ppo import train_ppo
from discourse_rl.decoders.agent.resume import AgentResume, FinishedTrainer, inputs_key
from discourse_rl.decoders.segments import (
    PUNCTUATION,
    EssaySegments,
    SegmentConfig,
    gold_frame,
    make_segments,
    paragraph_starts,
    save_segments,
    segment_gold_actions,
    spans_frame,
    tradeoff_table,
)

TRADEOFF_THRESHOLDS = (0.1, 0.3, 0.5, 0.9)
# The trade-off is measured on at most this many training essays (it is a summary, not a fit).
TRADEOFF_ESSAYS = 2000


def ppo_subset(train: Sequence[EssaySegments], max_essays: int, seed: int) -> list[EssaySegments]:
    """PPO's training essays: a seeded `max_essays` of `train` (0 or more than there are: all).
    SB3 PPO is the one trainer too slow for every essay in the reference budget."""
    if not max_essays or max_essays >= len(train):
        return list(train)
    keep = np.random.default_rng([seed, 2]).choice(len(train), max_essays, replace=False)
    return [train[i] for i in sorted(keep.tolist())]


def train_agent_stage(
    run_dir: str | Path,
    corpus: Corpus,
    probs: Probs,
    split: Split,
    seg_cfg: SegmentConfig,
    cfg: AgentConfig,
    seeds: Sequence[int] = (0,),
    episode_cfg: EpisodeConfig | None = None,
) -> AgentResults:
    """Train on `split.train` and score on `split.heldout` for each seed; returns (and writes)
    the results. BC and the episode trainer learn from every training essay, PPO from at most
    `cfg.max_essays` of them; each row records its count.

    With `episode_cfg`, each seed's BC policy is also fine-tuned by the episode-level trainer
    (`RUN/agent/episode/`, an extra row of the table). Each trainer of each seed is recorded as
    it finishes and reused when the stage runs again on the same inputs (`agent.resume`);
    other inputs start from an empty agent/ folder, so no policy of an earlier configuration
    survives to be served by `predict`.
    """
    lay = RunLayout(run_dir)
    if not seeds:
        raise DiscourseRLError("agent_seeds: at least one seed")
    train_ids, test_ids = list(split.train), list(split.heldout)
    ids = sorted([*train_ids, *test_ids])
    missing = [i for i in ids if i not in probs or i not in corpus.essays]
    if missing:
        raise DiscourseRLError(f"{lay.root}: essay {missing[0]} of the split has no probabilities")
    heldout = split.describe()
    n_train, n_test = len(train_ids), len(test_ids)

    t0 = time.perf_counter()
    words = {i: corpus.essays[i].words for i in ids}
    paragraphs = paragraph_starts(corpus.essays, ids) if seg_cfg.rich_features else None
    segs = make_segments(probs, seg_cfg, ids, words, paragraphs)
    segs = segment_gold_actions(segs, corpus)
    seg_seconds = time.perf_counter() - t0
    key = inputs_key(
        segs, corpus.subset(ids), train_ids, test_ids, (seg_cfg, cfg, episode_cfg, list(seeds))
    )
    resume = AgentResume.open(lay, key)
    atomic_write_text(lay.segments_config, config_to_toml(seg_cfg))
    save_segments(lay.segments, segs)
    if not split.simulated:
        write_split(lay.split, split)
    by_id = {s.essay_id: s for s in segs}
    train_segs = [by_id[i] for i in train_ids]
    test_segs = [by_id[i] for i in test_ids]
    train_probs = {i: probs[i] for i in train_ids}
    tradeoff = tuple(
        TradeoffRow(
            str(r.get("punctuation", "-")),
            float(r["start_threshold"]),
            float(r["segments_per_essay"]),
            float(r["segments_per_element"]),
            float(r["oracle_macro_f1"]),
        )
        for r in tradeoff_table(
            {i: probs[i] for i in train_ids[:TRADEOFF_ESSAYS]},
            corpus,
            TRADEOFF_THRESHOLDS,
            seg_cfg,
            PUNCTUATION,
        ).to_dict(orient="records")
    )

    gt = gold_frame(corpus, test_ids)
    test_probs = {i: probs[i] for i in test_ids}
    thresholds = decode.fit_tuned(train_probs, corpus.subset(train_ids))
    tuned = decode.decode_all(test_probs, lambda p: decode.decode_tuned(p, thresholds))
    gold_actions = [s.gold_action for s in test_segs]
    fixed = {
        "ner-naive": heldout_score(decode.decode_all(test_probs, decode.decode_naive), gt),
        "ner-tuned": heldout_score(tuned, gt),
        ORACLE: heldout_score(spans_frame(test_segs, gold_actions), gt),  # type: ignore[arg-type]
    }
    trainers = ("bc", "ppo", "episode") if episode_cfg is not None else ("bc", "ppo")
    scores: dict[str, list[HeldOutScore]] = {t: [] for t in trainers}
    learnt_from = dict.fromkeys(trainers, n_train)
    records: list[SeedRecord] = []

    def score(path: Path) -> HeldOutScore:
        return heldout_score(predict_spans(path, test_segs), gt)

    def from_bc(
        trainer: str,
        train: Callable[..., TrainedPolicy],
        segs: Sequence[EssaySegments],
        trainer_cfg: AgentConfig | EpisodeConfig,
        k: int,
        seed: int,
        val: Sequence[EssaySegments],
    ) -> FinishedTrainer:
        """Run (or reuse) PPO or the episode trainer: both fine-tune seed k's BC policy."""
        inputs = FineTuneInputs(
            segs,
            corpus,
            bc_path=lay.policy("bc", k, seed),
            out_dir=lay.trainer_dir(trainer, k, seed),
            val_segs=val,
            tb_dir=lay.tensorboard(f"agent_{trainer}_seed{seed}"),
        )
        return resume.run(trainer, k, seed, partial(train, inputs, trainer_cfg), score)

    for k, seed in enumerate(seeds):
        scfg = dataclasses.replace(cfg, seed=int(seed))
        tr, val = split_validation(train_segs, scfg.val_fraction, scfg.seed)
        tr_ppo = ppo_subset(tr, scfg.max_essays, scfg.seed)
        learnt_from["ppo"] = len(tr_ppo) + len(val)
        atomic_write_text(lay.seed_config(k, seed), config_to_toml(scfg))

        bc = resume.run(
            "bc",
            k,
            seed,
            partial(
                train_bc,
                tr,
                scfg,
                lay.trainer_dir("bc", k, seed),
                val_segs=val,
                corpus=corpus,
                log_dir=lay.tensorboard(f"agent_bc_seed{seed}"),
            ),
            score,
        )
        ppo = from_bc("ppo", train_ppo, tr_ppo, scfg, k, seed, val)
        scores["bc"].append(bc.heldout)
        scores["ppo"].append(ppo.heldout)
        episode_s = None
        if episode_cfg is not None:
            ep_cfg = dataclasses.replace(episode_cfg, seed=int(seed))
            ep = from_bc("episode", train_episode, tr, ep_cfg, k, seed, val)
            episode_s = ep.seconds
            scores["episode"].append(ep.heldout)
        records.append(
            SeedRecord(
                int(seed),
                bc.seconds,
                ppo.seconds,
                int(ppo.stats["env_steps"]),
                float(ppo.stats["steps_per_second"]),
                episode_s,
            )
        )
        # Written after every seed, so an interrupted stage still shows what it finished.
        done = [int(s) for s in seeds[: k + 1]]
        results = AgentResults(
            n_train,
            n_test,
            heldout,
            tuple(
                StageScores.combine(n, [s], (), n_train if n == "ner-tuned" else 0, n_test)
                for n, s in fixed.items()
            )
            + tuple(
                StageScores.combine(n, s, done, learnt_from[n], n_test) for n, s in scores.items()
            ),
            tuple(records),
            tradeoff,
            float(np.mean([s.n_segments for s in segs])),
            seg_seconds,
        )
        results.write(lay.agent_results)
    return results
