"""gbdt variants on a proxy: a run's real out-of-fold tagger probabilities (or simulated ones),
trained on the protocol's training essays (or a seeded subset) and scored on its held-out ones.

    PYTHONPATH=src nice -n 5 .venv/bin/python -m experiments.span_proxy \\
        --probs /tmp/ref/oof.npz --data ../shared/data/feedback-prize-2021 --train-essays 4000 \\
        --variant base: --variant sent:sentence_ends=3 --variant rich:rich_features=true

`--variant NAME:KEY=VALUE,KEY=VALUE` is one gbdt configuration (`GbdtConfig` fields on top of
`--base`, values in JSON: `subspan_shares=[0.65]`); `rules=...` (a `spans.rules.RuleSettings`
field, e.g. `rules.one_per_essay=true`) post-processes its spans. The held-out essays are
RUN/split.json's when `--split` names one, else the protocol's draw (`heldout_split(ids, 0.2,
0)`, what the gbdt step writes). Per variant: candidates per essay and their recall per class
(training and held-out essays), held-out macro F1, per-class F1, the seed's unit (essay
TP/(TP+FP+FN)) and the seconds spent. Candidate tables are built once per candidate setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from discourse_rl.core.data import CLASSES, Corpus, load_corpus, load_word_probs
from discourse_rl.core.protocol import heldout_score, heldout_split, read_split, scored_ids
from discourse_rl.core.records import HeldOutScore
from discourse_rl.decoders import constrained, decode
from discourse_rl.decoders.gbdt.candidates import essay_candidates, hit_matrix, recall_per_class
from discourse_rl.decoders.gbdt.candidates_plus import plus_active
from discourse_rl.decoders.gbdt.combine import Member, Predictor, fit_combined
from discourse_rl.decoders.gbdt.features import essay_layout
from discourse_rl.decoders.gbdt.gbdt import SpanModel, TrainingTable, fit_table
from discourse_rl.decoders.gbdt.model import CandidateTable, GbdtConfig, _extend, build_candidates
from discourse_rl.decoders.gbdt.postprocess import RuleSettings
from discourse_rl.decoders.gbdt.search import subset_table
from discourse_rl.decoders.segments import gold_frame, simulate_word_probs
from discourse_rl.run.config import RunConfig, load_run_config

CANDIDATE_FIELDS = (
    "start_threshold",
    "max_ends",
    "class_min_prob",
    "max_classes",
    "shift",
    "paragraph_candidates",
    "sentence_ends",
    "clause_ends",
    "class_start_threshold",
    "subspan_shares",
    "sentence_splits",
    "merge_naive",
    "merge_gap",
    "rare_min_prob",
    "rich_features",
)


def parse_settings(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        v = json.loads(value)
        out[key.strip()] = tuple(v) if isinstance(v, list) else v
    return out


def split_settings(d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    gbdt = {k: v for k, v in d.items() if not k.startswith("rules.")}
    rules = {k[6:]: v for k, v in d.items() if k.startswith("rules.")}
    return gbdt, rules


def with_rules(model: SpanModel, rules: RuleSettings) -> SpanModel:
    """`model` predicting with the `rules.` settings of a variant (the gbdt config's switches)."""
    cfg = dataclasses.replace(
        model.cfg,
        one_per_essay=rules.one_per_essay,
        repair_gap=rules.repair_gap,
        short_evidence=rules.short_evidence,
    )
    return dataclasses.replace(model, cfg=cfg)


def add_data_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data", type=Path, default=None, help="Kaggle folder (default: sample)")
    ap.add_argument("--probs", type=Path, default=None, help="oof.npz (default: --simulate)")
    ap.add_argument("--simulate", type=float, default=0.5, help="noise of simulated probabilities")
    ap.add_argument("--split", type=Path, default=None, help="a run's split.json")
    ap.add_argument("--essays", type=int, default=0, help="simulated: draw this many (0: all)")
    ap.add_argument("--train-essays", type=int, default=0, help="seeded training subset (0: all)")
    ap.add_argument("--held-essays", type=int, default=0, help="seeded held-out subset (0: all)")


def score_row(
    key: str, name: str, seed: int, pred: pd.DataFrame, gt: pd.DataFrame
) -> tuple[HeldOutScore, dict[str, Any]]:
    """The held-out score of `pred`, and the head of its results row: `name` under `key`, the
    seed, the macro F1 and the essay score (4 places)."""
    sc = heldout_score(pred, gt)
    head: dict[str, Any] = {
        key: name,
        "seed": seed,
        "macro_f1": round(sc.macro_f1, 4),
        "essay_tp_fp_fn": round(sc.essay_jaccard, 4),
    }
    return sc, head


def emit(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Keep a results row and print it as one JSON line."""
    rows.append(row)
    print(json.dumps(row), flush=True)


@dataclasses.dataclass(frozen=True)
class RunData:
    """What a study of an existing run reads from its folder (`add_run_args`, `run_data`)."""

    config: RunConfig
    corpus: Corpus
    probs: dict[str, Any]
    """The tagger's out-of-fold word probabilities (RUN/ner/oof.npz)."""
    train: list[str]
    held: list[str]


def add_run_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--run", type=Path, required=True, help="a run folder (config, oof, split)")
    ap.add_argument("--data", type=Path, required=True, help="its Kaggle data folder")
    ap.add_argument("--limit", type=int, default=0, help="a smoke test: the first N of each side")


def run_data(args: argparse.Namespace) -> RunData:
    probs = dict(load_word_probs(args.run / "ner" / "oof.npz"))
    split = read_split(args.run / "split.json")
    train, held = sorted(split.train), sorted(split.heldout)
    if args.limit:
        train, held = train[: args.limit], held[: args.limit]
    config = load_run_config(args.run / "config.toml")
    return RunData(config, load_corpus(args.data, ids=list(probs)), probs, train, held)


def proxy_data(args: argparse.Namespace) -> tuple[Corpus, dict[str, Any], list[str], list[str]]:
    """The corpus, word probabilities, training and held-out essay ids of the proxy."""
    t0 = time.perf_counter()
    probs: dict[str, Any]
    if args.probs is not None:
        probs = dict(load_word_probs(args.probs))
        corpus = load_corpus(args.data, ids=list(probs))  # only the essays with probabilities
        ids = scored_ids(probs, corpus)
        source = str(args.probs)
    else:
        corpus = load_corpus(args.data)
        ids = corpus.sure_ids()
        if args.essays:
            ids = sorted(np.random.default_rng(0).choice(ids, args.essays, replace=False).tolist())
        probs = dict(simulate_word_probs(corpus, args.simulate, 0, ids))
        source = f"simulated noise {args.simulate}"
    split = read_split(args.split) if args.split else heldout_split(ids, 0.2, 0)
    train, held = list(split.train), list(split.heldout)
    if args.train_essays and args.train_essays < len(train):
        pick = np.random.default_rng(1).choice(len(train), args.train_essays, replace=False)
        train = sorted(train[i] for i in pick)
    if args.held_essays and args.held_essays < len(held):
        pick = np.random.default_rng(2).choice(len(held), args.held_essays, replace=False)
        held = sorted(held[i] for i in pick)
    print(
        f"{source}: {len(train)} training, {len(held)} held-out essays "
        f"(loaded in {time.perf_counter() - t0:.0f} s; load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    return corpus, probs, train, held


def candidate_recall(
    probs: dict[str, Any],
    corpus: Corpus,
    ids: Sequence[str],
    cfg: GbdtConfig,
    limits: constrained.ConstrainedParams,
) -> tuple[float, dict[str, float]]:
    """Candidates per essay and recall per class, without features."""
    found, gold_cls, count = [], [], 0
    for eid in ids:
        p = np.asarray(probs[eid], dtype=np.float32)
        essay = corpus.essays[eid]
        vit = constrained.constrained_spans(p, limits.unique_classes)
        layout = essay_layout(essay)
        breaks = np.flatnonzero(layout.paragraph) if cfg.paragraph_candidates else None
        cand = essay_candidates(p, vit, cfg.candidates(), breaks)
        if plus_active(cfg):
            cand = _extend(cand, p, vit, layout, essay, cfg, breaks)
        count += cand.size
        el = corpus.essay_elements(eid)
        gold = tuple(el[c].to_numpy(np.int64) for c in ("class_idx", "word_start", "word_end"))
        m = hit_matrix((cand.cls, cand.start, cand.end), gold)  # type: ignore[arg-type]
        found.append(np.asarray(m.any(0)))
        gold_cls.append(gold[0])
    return count / max(len(ids), 1), recall_per_class(found, gold_cls)


def gbdt_member(
    data: TrainingTable,
    htab: CandidateTable,
    corpus: Corpus,
    cfg: GbdtConfig,
    rule_cfg: RuleSettings,
    probs: dict[str, Any],
) -> Member:
    """A gbdt variant as a combining-stage member, on its already built tables."""
    row_of = {eid: k for k, eid in enumerate(data.table.ids)}
    hrow_of = {eid: k for k, eid in enumerate(htab.ids)}

    def fit(ids: Sequence[str]) -> Predictor:
        rows = np.array([row_of[i] for i in ids])
        part = TrainingTable(sorted(ids), data.limits, subset_table(data.table, rows))
        model = fit_table(part, corpus, cfg)

        def predict(pred_ids: Sequence[str]) -> pd.DataFrame:
            if all(i in row_of for i in pred_ids):
                tab = subset_table(data.table, np.array([row_of[i] for i in pred_ids]))
            else:
                tab = subset_table(htab, np.array([hrow_of[i] for i in pred_ids]))
            return with_rules(model, rule_cfg).predict_table(tab, corpus.essays)

        return predict

    return fit


def ner_members(probs: dict[str, Any], corpus: Corpus) -> dict[str, Member]:
    def tuned(ids: Sequence[str]) -> Predictor:
        th = decode.fit_tuned({i: probs[i] for i in ids}, corpus.subset(ids))
        return lambda pred: decode.decode_all(
            {i: probs[i] for i in pred}, partial(decode.decode_tuned, thresholds=th)
        )

    def constrained_(ids: Sequence[str]) -> Predictor:
        params = constrained.fit_constrained(probs, corpus, list(ids))
        return lambda pred: decode.decode_all(
            {i: probs[i] for i in pred}, partial(constrained.decode_constrained, params=params)
        )

    return {"ner-tuned": tuned, "ner-constrained": constrained_}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_data_args(ap)
    ap.add_argument("--base", default="", help="KEY=VALUE,... on top of GbdtConfig()")
    ap.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE,...")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="write the rows here too")
    ap.add_argument(
        "--recall-only",
        action="store_true",
        help="per variant only the candidates' count and recall (no features, no fit)",
    )
    ap.add_argument(
        "--combine",
        action="store_true",
        help="also the combining stage over ner-tuned, ner-constrained and the variants",
    )
    args = ap.parse_args()

    corpus, probs, train, held = proxy_data(args)
    gt = gold_frame(corpus, held)
    held_probs = {i: probs[i] for i in held}
    base = {"num_threads": args.threads, **parse_settings(args.base)}
    limits = constrained.fit_constrained(
        probs, corpus, train, constrained.ConstrainedConfig(fit=False)
    )
    tables: dict[str, tuple[TrainingTable, Any, float]] = {}
    members: dict[str, Member] = {}
    rows = []
    fits: dict[str, Any] = {}
    for spec in args.variant or ["base:"]:
        name, _, rest = spec.partition(":")
        g, r = split_settings({**base, **parse_settings(rest)})
        cfg = dataclasses.replace(GbdtConfig(), **g)
        rule_cfg = RuleSettings(**r)
        if args.recall_only:
            for part, part_ids in (("train", train), ("held", held)):
                t = time.perf_counter()
                per_essay, recall = candidate_recall(probs, corpus, part_ids, cfg, limits)
                row = {
                    "variant": name,
                    "essays": part,
                    "candidates_per_essay": round(per_essay, 1),
                    "seconds": round(time.perf_counter() - t, 1),
                    **{c: round(v, 3) for c, v in recall.items()},
                }
                print(json.dumps(row), flush=True)
            continue
        ckey = json.dumps({k: getattr(cfg, k) for k in CANDIDATE_FIELDS}, sort_keys=True)
        if ckey not in tables:
            t = time.perf_counter()
            tab = build_candidates(probs, corpus.essays, train, cfg, limits, corpus)
            htab = build_candidates(held_probs, corpus.essays, held, cfg, limits, corpus)
            tables[ckey] = (
                TrainingTable(sorted(train), limits, tab),
                htab,
                time.perf_counter() - t,
            )
        data, htab, build_s = tables[ckey]
        members[name] = gbdt_member(data, htab, corpus, cfg, rule_cfg, probs)
        for seed in args.seeds:
            t = time.perf_counter()
            fkey = json.dumps(dataclasses.asdict(cfg), sort_keys=True) + str(seed)
            if fkey not in fits:
                fits[fkey] = fit_table(data, corpus, dataclasses.replace(cfg, seed=seed))
            model = fits[fkey]
            fit_s = time.perf_counter() - t
            pred = with_rules(model, rule_cfg).predict_table(htab, corpus.essays)
            sc, row = score_row("variant", name, seed, pred, gt)
            row |= {
                "cand_train": round(data.table.cls.size / len(train), 1),
                "cand_held": round(htab.cls.size / len(held), 1),
                "build_s": round(build_s, 1),
                "fit_s": round(fit_s, 1),
                "load": round(os.getloadavg()[0], 1),
                **{f"f1 {c}": round(v, 4) for c, v in sc.per_class.items()},
                **{f"recall {c}": round(v, 3) for c, v in (htab.recall or {}).items()},
                **{f"train recall {c}": round(v, 3) for c, v in data.table.recall.items()},  # type: ignore[union-attr]
            }
            emit(rows, row)
    if args.recall_only:
        return
    if args.combine:
        members = {**ner_members(probs, corpus), **members}
        t = time.perf_counter()
        choice, predict = fit_combined(members, train, corpus, folds=2)
        fit_s = time.perf_counter() - t
        sc, row = score_row("variant", "combined", 0, predict(held), gt)
        print("combined choice:", json.dumps(choice.to_json()), flush=True)
        row |= {
            "cand_held": float("nan"),
            "fit_s": round(fit_s, 1),
            "load": round(os.getloadavg()[0], 1),
            **{f"f1 {c}": round(v, 4) for c, v in sc.per_class.items()},
        }
        emit(rows, row)
    df = pd.DataFrame(rows)
    short = {f"f1 {c}": c[:5] for c in CLASSES}
    cols = ["variant", "seed", "macro_f1", "essay_tp_fp_fn", "cand_held", "fit_s", *short]
    print(df[cols].rename(columns=short).to_string(index=False))
    rec = [f"recall {c}" for c in CLASSES]
    print(df[["variant", *rec]].rename(columns={r: r[7:12] for r in rec}).to_string(index=False))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
