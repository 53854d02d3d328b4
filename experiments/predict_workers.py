"""Is prediction of many essays faster in two single-thread processes than in one 2-thread one,
and are the probabilities the same? Times `predict_word_probs(run, essays, threads=2,
workers=w)` for w = 1 and 2 on the first N essays (by id) of a data folder, then compares the
two results and their naive macro F1 on those essays.

    .venv/bin/python -m experiments.predict_workers runs/reference-s2 \\
        ../shared/data/feedback-prize-2021 [N]

Prints each setting's seconds, then one JSON line.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from discourse_rl.core.data import load_corpus
from discourse_rl.core.metric import score
from discourse_rl.decoders.decode import decode_all, decode_naive
from discourse_rl.decoders.segments import gold_frame
from discourse_rl.ner import predict_word_probs


def main(argv: list[str]) -> None:
    run, data = argv[0], argv[1]
    n = int(argv[2]) if len(argv) > 2 else 1500
    corpus = load_corpus(data)
    ids = sorted(corpus.essays)[:n]
    essays = {i: corpus.essays[i] for i in ids}
    out: dict[str, float] = {"essays": len(ids), "words": sum(e.n_words for e in essays.values())}
    probs = {}
    for w in (1, 2):
        t = time.perf_counter()
        probs[w] = predict_word_probs(run, essays, threads=2, workers=w)
        out[f"seconds_workers{w}"] = round(time.perf_counter() - t, 1)
        print(w, out[f"seconds_workers{w}"], flush=True)
    gt = gold_frame(corpus, ids)
    for w in (1, 2):
        macro = score(decode_all(probs[w], decode_naive), gt).macro_f1
        out[f"naive_macro_f1_workers{w}"] = round(float(macro), 4)
    out["max_abs_prob_diff"] = max(float(np.abs(probs[1][i] - probs[2][i]).max()) for i in ids)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
