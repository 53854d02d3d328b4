"""The agent stage of a run: segments, BC and PPO per seed, scored on the held-out fold.

Writes RUN/segments.npz, RUN/agent/{config.toml, segments.toml, bc/, rl/, results.json,
results.md} (further seeds under RUN/agent/seed<s>/) and TensorBoard logs under RUN/tb/.
The held-out essays are also decoded by the NER baselines (naive argmax, and the tuned minima
fitted on the training essays' probabilities) so all rows of the table face the same essays.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from discourse_rl import decode, metric
from discourse_rl.agent import predict_spans
from discourse_rl.agent.bc import train_bc
from discourse_rl.agent.common import AgentConfig, split_validation
from discourse_rl.agent.episode import EpisodeConfig, train_episode
from discourse_rl.agent.ppo import train_ppo
from discourse_rl.common import (
    DiscourseRLError,
    atomic_write_text,
    config_from_dict,
    config_to_toml,
    load_toml,
)
from discourse_rl.data import CLASS_INDEX, CLASSES, Corpus, make_folds
from discourse_rl.segments import (
    PUNCTUATION,
    SegmentConfig,
    gold_frame,
    make_segments,
    save_segments,
    segment_gold_actions,
    spans_frame,
    tradeoff_table,
)

Probs = Mapping[str, npt.NDArray[np.float32]]
TRADEOFF_THRESHOLDS = (0.1, 0.3, 0.5, 0.9)
# The trade-off is measured on at most this many training essays (it is a summary, not a fit).
TRADEOFF_ESSAYS = 2000


def stage_configs(path: str | Path | None) -> tuple[SegmentConfig, AgentConfig]:
    """The [segments] and [agent] tables of a run config (defaults where absent)."""
    if path is None:
        return SegmentConfig(), AgentConfig()
    data = load_toml(path)
    seg = config_from_dict(SegmentConfig, data.get("segments", {}), where=f"{path}: segments")
    agent = config_from_dict(AgentConfig, data.get("agent", {}), where=f"{path}: agent")
    if seg.max_segments > agent.max_segments:
        raise DiscourseRLError(
            f"{path}: segments.max_segments ({seg.max_segments}) exceeds agent.max_segments "
            f"({agent.max_segments})"
        )
    return seg, agent


def heldout_split(
    run_dir: Path, corpus: Corpus, ids: Sequence[str], fold: int
) -> tuple[list[str], list[str]]:
    """(train, held-out) essay ids: the NER stage's folds when present, else fresh ones."""
    path = run_dir / "ner" / "folds.json"
    if path.is_file():
        folds: dict[str, int] = json.loads(path.read_text(encoding="utf-8"))
    else:
        folds = make_folds(corpus.subset(ids), 5, 0)
    missing = [i for i in ids if i not in folds]
    if missing:
        raise DiscourseRLError(f"{path}: essay {missing[0]} has no fold")
    test = [i for i in ids if folds[i] == fold]
    if not test:
        raise DiscourseRLError(f"agent.holdout_fold: fold {fold} holds none of the essays")
    return [i for i in ids if folds[i] != fold], test


def _scores(pred: pd.DataFrame, gt: pd.DataFrame) -> dict[str, float]:
    """Per-class and macro F1, plus the per-essay means of the RL reward (essay F1) and of the
    seed's essay score TP / (TP + FP + FN)."""
    score = metric.score(pred, gt)
    out = {c: score.per_class[c].f1 for c in CLASSES}
    out["macro"] = score.macro_f1
    pred_by = {k: g for k, g in pred.groupby("id", sort=False)}
    f1s, jacs = [], []
    for eid, g in gt.groupby("id", sort=False):
        p = pred_by.get(eid, pred.iloc[:0])
        counts = metric.essay_counts(
            np.asarray(p["class"].map(CLASS_INDEX), dtype=np.int64),
            p["word_start"].to_numpy(np.int64),
            p["word_end"].to_numpy(np.int64),
            np.asarray(g["discourse_type"].map(CLASS_INDEX), dtype=np.int64),
            g["word_start"].to_numpy(np.int64),
            g["word_end"].to_numpy(np.int64),
        )
        f1s.append(metric.essay_f1(counts))
        jacs.append(metric.essay_jaccard(counts))
    out["essay_f1"] = float(np.mean(f1s))
    out["essay_jaccard"] = float(np.mean(jacs))
    return out


def train_agent_stage(
    run_dir: str | Path,
    corpus: Corpus,
    probs: Probs,
    seg_cfg: SegmentConfig,
    cfg: AgentConfig,
    seeds: Sequence[int] = (0,),
    episode_cfg: EpisodeConfig | None = None,
) -> dict[str, Any]:
    """Train and score the agent for each seed; returns (and writes) the results.

    With `episode_cfg`, each seed's BC policy is also fine-tuned by the episode-level trainer
    (`RUN/agent/episode/`, an extra row of the table).
    """
    run = Path(run_dir)
    ids = sorted(set(probs) & set(corpus.essays))
    if not ids:
        raise DiscourseRLError(f"{run}: no essay has both word probabilities and labels")
    if cfg.max_essays and cfg.max_essays < len(ids):
        ids = sorted(np.random.default_rng(0).choice(ids, cfg.max_essays, replace=False))
    train_ids, test_ids = heldout_split(run, corpus, ids, cfg.holdout_fold)
    agent_dir = run / "agent"
    atomic_write_text(agent_dir / "segments.toml", config_to_toml(seg_cfg))

    t0 = time.perf_counter()
    words = {i: corpus.essays[i].words for i in ids}
    segs = segment_gold_actions(make_segments(probs, seg_cfg, ids, words), corpus)
    save_segments(run / "segments.npz", segs)
    seg_seconds = time.perf_counter() - t0
    by_id = {s.essay_id: s for s in segs}
    train_segs = [by_id[i] for i in train_ids]
    test_segs = [by_id[i] for i in test_ids]
    train_probs = {i: probs[i] for i in train_ids}
    tradeoff = tradeoff_table(
        {i: probs[i] for i in train_ids[:TRADEOFF_ESSAYS]},
        corpus,
        TRADEOFF_THRESHOLDS,
        seg_cfg,
        PUNCTUATION,
    )

    gt = gold_frame(corpus, test_ids)
    test_probs = {i: probs[i] for i in test_ids}
    thresholds = decode.fit_tuned(train_probs, corpus.subset(train_ids))
    tuned = decode.decode_all(test_probs, lambda p: decode.decode_tuned(p, thresholds))
    gold_actions = [s.gold_action for s in test_segs]
    rows: dict[str, list[dict[str, float]]] = {
        "ner_naive": [_scores(decode.decode_all(test_probs, decode.decode_naive), gt)],
        "ner_tuned": [_scores(tuned, gt)],
        "oracle": [_scores(spans_frame(test_segs, gold_actions), gt)],  # type: ignore[arg-type]
        "bc": [],
        "rl": [],
        **({"episode": []} if episode_cfg is not None else {}),
    }
    runs: list[dict[str, Any]] = []
    for k, seed in enumerate(seeds):
        scfg = dataclasses.replace(cfg, seed=int(seed))
        out = agent_dir if k == 0 else agent_dir / f"seed{seed}"
        tr, val = split_validation(train_segs, scfg.val_fraction, scfg.seed)
        atomic_write_text(out / "config.toml", config_to_toml(scfg))
        t = time.perf_counter()
        bc = train_bc(
            tr,
            scfg,
            out / "bc",
            val_segs=val,
            corpus=corpus,
            log_dir=run / "tb" / f"agent_bc_seed{seed}",
        )
        bc_s = time.perf_counter() - t
        t = time.perf_counter()
        rl = train_ppo(
            tr,
            corpus,
            bc,
            scfg,
            out / "rl",
            val_segs=val,
            tb_dir=run / "tb" / f"agent_rl_seed{seed}",
        )
        rl_s = time.perf_counter() - t
        rows["bc"].append(_scores(predict_spans(bc, test_segs), gt))
        rows["rl"].append(_scores(predict_spans(rl, test_segs), gt))
        ppo = json.loads((out / "rl" / "history.json").read_text(encoding="utf-8"))
        record: dict[str, Any] = {
            "seed": int(seed),
            "bc_seconds": bc_s,
            "ppo_seconds": rl_s,
            "env_steps": ppo["env_steps"],
            "steps_per_second": ppo["steps_per_second"],
            "bc": rows["bc"][-1]["macro"],
            "rl": rows["rl"][-1]["macro"],
        }
        if episode_cfg is not None:
            t = time.perf_counter()
            ep = train_episode(
                tr,
                corpus,
                bc,
                dataclasses.replace(episode_cfg, seed=int(seed)),
                out / "episode",
                val_segs=val,
                tb_dir=run / "tb" / f"agent_episode_seed{seed}",
                agent_cfg=scfg,
            )
            record["episode_seconds"] = time.perf_counter() - t
            rows["episode"].append(_scores(predict_spans(ep, test_segs), gt))
            record["episode"] = rows["episode"][-1]["macro"]
        runs.append(record)
        _write_results(
            agent_dir, rows, runs, tradeoff, len(train_ids), len(test_ids), segs, seg_seconds
        )
    return json.loads((agent_dir / "results.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _write_results(
    agent_dir: Path,
    rows: dict[str, list[dict[str, float]]],
    runs: list[dict[str, Any]],
    tradeoff: pd.DataFrame,
    n_train: int,
    n_test: int,
    segs: Sequence[Any],
    seg_seconds: float,
) -> None:
    summary = {
        name: {
            col: {
                "mean": float(np.mean([r[col] for r in rs])),
                "std": float(np.std([r[col] for r in rs], ddof=1)) if len(rs) > 1 else 0.0,
            }
            for col in rs[0]
        }
        for name, rs in rows.items()
        if rs
    }
    n_seg = np.array([s.n_segments for s in segs])
    result = {
        "train_essays": n_train,
        "heldout_essays": n_test,
        "segments_per_essay": float(n_seg.mean()),
        "segments_seconds": seg_seconds,
        "scores": rows,
        "summary": summary,
        "runs": runs,
        "tradeoff": tradeoff.to_dict(orient="records"),
    }
    atomic_write_text(agent_dir / "results.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(agent_dir / "results.md", results_markdown(result))


def results_markdown(result: dict[str, Any]) -> str:
    names = {
        "ner_naive": "NER naive",
        "ner_tuned": "NER tuned",
        "bc": "BC",
        "rl": "RL",
        "episode": "RL (episode trainer)",
        "oracle": "segment oracle",
    }
    cols = [*CLASSES, "macro", "essay_f1", "essay_jaccard"]
    n_seeds = len(result["runs"])
    lines = [
        f"Held-out essays: {result['heldout_essays']} (agent trained on "
        f"{result['train_essays']}); BC and RL: mean ± sd over {n_seeds} seed(s).",
        "",
        "Essay F1 and essay TP/(TP+FP+FN) (the seed's score) are means over held-out essays.",
        "",
        "| stage | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for key, name in names.items():
        s = result["summary"].get(key)
        if s is None:
            continue
        cells = []
        for c in cols:
            m, sd = s[c]["mean"], s[c]["std"]
            multi = key in AGENT_STAGES and n_seeds > 1
            cells.append(f"{m:.3f} ± {sd:.3f}" if multi else f"{m:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| seed | BC s | PPO s | env steps | steps/s | BC macro | RL macro |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['seed']} | {r['bc_seconds']:.0f} | {r['ppo_seconds']:.0f} | {r['env_steps']}"
            f" | {r['steps_per_second']:.0f} | {r['bc']:.4f} | {r['rl']:.4f} |"
        )
    lines += [
        "",
        "Segment trade-off (training essays):",
        "",
        "| punctuation | start threshold | segments/essay | segments/element | oracle macro F1 |",
        "|---|---|---|---|---|",
    ]
    for t in result["tradeoff"]:
        lines.append(
            f"| {t.get('punctuation', '-')} | {t['start_threshold']:.2f}"
            f" | {t['segments_per_essay']:.1f} | {t['segments_per_element']:.2f}"
            f" | {t['oracle_macro_f1']:.4f} |"
        )
    return "\n".join(lines) + "\n"


AGENT_STAGES = ("bc", "rl", "episode")


def predict_stage(
    run_dir: str | Path,
    stage: str,
    probs: Probs,
    words: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Spans for new essays' word probabilities (and words) from a run's BC or RL policy."""
    if stage not in AGENT_STAGES:
        raise DiscourseRLError(f"stage: expected one of {AGENT_STAGES}, got {stage!r}")
    agent_dir = Path(run_dir) / "agent"
    seg_path = agent_dir / "segments.toml"
    if not seg_path.is_file():
        raise DiscourseRLError(f"{run_dir}: no trained agent (missing {seg_path}; train-agent)")
    seg_cfg = config_from_dict(SegmentConfig, load_toml(seg_path), where=str(seg_path))
    return predict_spans(
        agent_dir / stage / "policy.pt", make_segments(probs, seg_cfg, None, words)
    )
