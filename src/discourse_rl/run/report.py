"""Human-readable summaries: the data report (more reports join as the pipeline grows)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from discourse_rl.core.data import CLASSES, load_corpus, sample_dir
from discourse_rl.core.data.corpus import QUIRK_NAMES


def data_report(data: str | Path | None = None) -> dict[str, Any]:
    """Counts a user checks before training: essays, elements, lengths, repairs, sureness."""
    corpus = load_corpus(data)
    n_words = np.array([e.n_words for e in corpus.essays.values()])
    per_type = corpus.elements["discourse_type"].value_counts()
    conf = corpus.match_confidence
    if conf is None:
        sureness: dict[str, int] = {"unknown (no essay_match_confidence.csv)": len(corpus.essays)}
    else:
        sureness = dict(Counter(conf.get(i, "missing") for i in corpus.essays).most_common())
    return {
        "data": str(corpus.root if data is not None else sample_dir()),
        "essays": len(corpus.essays),
        "test_essays": len(corpus.test_essays),
        "elements": len(corpus.elements),
        "elements_per_type": {c: int(per_type.get(c, 0)) for c in CLASSES},
        "words_per_essay": {
            "mean": float(n_words.mean()),
            "median": float(np.median(n_words)),
            "min": int(n_words.min()),
            "max": int(n_words.max()),
        },
        "repairs": dataclasses.asdict(corpus.quirks),
        "sure_essays": len(corpus.sure_ids()),
        "unsure_essays": len(corpus.essays) - len(corpus.sure_ids()),
        "match_confidence": sureness,
    }


def format_data_report(r: dict[str, Any]) -> str:
    w = r["words_per_essay"]
    lines = [
        f"data: {r['data']}",
        f"essays: {r['essays']:,} (+{r['test_essays']} unlabelled test essays)",
        f"elements: {r['elements']:,} ({r['elements'] / max(r['essays'], 1):.1f} per essay)",
    ]
    lines += [f"  {c:<22}{n:>9,}" for c, n in r["elements_per_type"].items()]
    lines.append(
        f"words per essay: mean {w['mean']:.0f}, median {w['median']:.0f}, "
        f"min {w['min']}, max {w['max']}"
    )
    lines.append("repairs while reading:")
    lines += [f"  {QUIRK_NAMES[k]:<40}{n:>6,}" for k, n in r["repairs"].items()]
    lines.append(f"sure essays: {r['sure_essays']:,}   unsure: {r['unsure_essays']:,}")
    lines += [f"  {k:<28}{v:>7,}" for k, v in r["match_confidence"].items()]
    return "\n".join(lines)
