"""Rebuild the embedded sample from a Kaggle-layout folder (run once; the result is committed).

python tools/make_sample.py ../shared/data/feedback-prize-2021 src/discourse_rl/sample
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

N_ESSAYS = 300
SEED = 2021


def main(src: Path, dst: Path) -> None:
    conf = pd.read_csv(src / "essay_match_confidence.csv", dtype=str)
    sure = sorted(conf.loc[conf["match_confidence"].isin(["clear_margin", "unique_length"]), "id"])
    ids = sorted(np.random.default_rng(SEED).choice(sure, N_ESSAYS, replace=False))
    (dst / "train").mkdir(parents=True, exist_ok=True)
    for eid in ids:
        shutil.copyfile(src / "train" / f"{eid}.txt", dst / "train" / f"{eid}.txt")
    train = pd.read_csv(src / "train.csv", dtype=str, keep_default_na=False)
    train[train["id"].isin(ids)].to_csv(dst / "train.csv", index=False)
    conf[conf["id"].isin(ids)].to_csv(dst / "essay_match_confidence.csv", index=False)
    shutil.copytree(src / "test", dst / "test", dirs_exist_ok=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
