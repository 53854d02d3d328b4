"""Every path of a run folder, named once.

A run folder is written by `discourse-rl run` (or stage by stage by `train-ner` and
`train-agent`) and read by `info`, `predict`, `label`, `serve` and the report. Modules ask a
`RunLayout` for a path instead of joining strings, so the folder's shape lives here only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FORMAT_VERSION = 2
"""Version of the run folder's layout and file schemas; bumped when a reader would break."""

RENAMED_STEPS = {"spans": "gbdt"}
"""Training steps by their earlier names (old -> new), the one place the old names live. A run
folder written before the rename keeps RUN/spans/, RUN/manifests/spans.json and its record
under "spans": `RunLayout.step_dir` and `RunLayout.manifest` find them under the new name, and
`records.read_stages` reads the record so, and the run is reused, not retrained. The step
writes under the new name when it next runs."""


def step_name(name: str) -> str:
    """A training step's name now (`RENAMED_STEPS`): 'spans' -> 'gbdt', any other unchanged."""
    return RENAMED_STEPS.get(name, name)


def _earlier_names(step: str) -> list[str]:
    return [old for old, new in RENAMED_STEPS.items() if new == step]


AGENT_TRAINERS = ("bc", "ppo", "episode")
"""Agent trainers, each with a policy folder per seed (`ppo` was called `rl` before format 2)."""


@dataclass(frozen=True)
class _Folder:
    """A folder named by its root; subclasses name the paths inside it."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))


@dataclass(frozen=True, init=False)
class RunLayout(_Folder):
    """The paths of one run folder. Pure naming: nothing here touches the disk, but for the
    folders of a step with an earlier name (`step_dir`, `manifest`) and `tuned`."""

    def step_dir(self, step: str) -> Path:
        """RUN/<step>/, the folder of a training step (other than ner and agent); a run written
        before the step was renamed has it under the earlier name (`RENAMED_STEPS`)."""
        return _renamed(self.root, step, "")

    # --- run level -----------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        """Resolved run configuration, seed included (one writer: the pipeline)."""
        return self.root / "config.toml"

    @property
    def stages(self) -> Path:
        """Each stage's key and wall time."""
        return self.root / "stages.json"

    @property
    def format(self) -> Path:
        """The run folder's format version and the versions of the code that wrote it."""
        return self.root / "format.json"

    @property
    def manifests(self) -> Path:
        """Size and sha256 of each stage's files, written when the stage finishes."""
        return self.root / "manifests"

    def manifest(self, stage: str) -> Path:
        """RUN/manifests/<stage>.json (under a renamed step's earlier name where only that
        one exists, `RENAMED_STEPS`)."""
        return _renamed(self.manifests, stage, ".json")

    @property
    def report(self) -> Path:
        return self.root / "results.md"

    def plot(self, name: str) -> Path:
        return self.root / f"{name}.png"

    def tensorboard(self, name: str) -> Path:
        return self.root / "tb" / name

    # --- NER stage -----------------------------------------------------------------------------
    @property
    def ner(self) -> Path:
        return self.root / "ner"

    @property
    def ner_config(self) -> Path:
        return self.ner / "config.toml"

    @property
    def ner_inputs(self) -> Path:
        """The key of the data and settings ner/ was trained from (others clear its models)."""
        return self.ner / "inputs.json"

    @property
    def ner_folds(self) -> Path:
        """Essay id -> NER fold."""
        return self.ner / "folds.json"

    @property
    def ner_encoder(self) -> Path:
        """The backbone as loaded (config, tokenizer, and weights in frozen mode)."""
        return self.ner / "encoder"

    @property
    def ner_encoder_config(self) -> Path:
        """The backbone's Hugging Face config: present once the NER stage saved its encoder."""
        return self.ner_encoder / "config.json"

    @property
    def ner_cache(self) -> Path:
        """Frozen mode: the encoder's word vectors, computed once."""
        return self.ner / "cache"

    @property
    def ner_frozen_states(self) -> Path:
        """'finetune' with `cache_frozen`: the frozen lower layers' output per training window
        (states.npy, index.json); removed once every fold is trained."""
        return self.ner / "frozen_states"

    @property
    def oof(self) -> Path:
        """Out-of-fold word probabilities of the training essays (float16)."""
        return self.ner / "oof.npz"

    @property
    def test_probs(self) -> Path:
        """Fold-mean word probabilities of the data folder's test essays."""
        return self.ner / "test.npz"

    @property
    def ner_metrics(self) -> Path:
        return self.ner / "metrics.json"

    def ner_fold(self, k: int) -> Path:
        return self.ner / f"fold{k}"

    def fold(self, k: int) -> FoldLayout:
        """The files of NER fold `k`."""
        return FoldLayout(self.ner_fold(k))

    def folds(self, n: int) -> list[FoldLayout]:
        return [self.fold(k) for k in range(n)]

    @property
    def ner_cache_vectors(self) -> Path:
        """(total words, hidden) float16, the essays of the index back to back."""
        return self.ner_cache / "vectors.npy"

    @property
    def ner_cache_index(self) -> Path:
        """The cached essays, their lengths and the settings the vectors depend on."""
        return self.ner_cache / "index.json"

    @property
    def ner_cache_progress(self) -> Path:
        """How many essays of the index are encoded (the cache fills in resumable chunks)."""
        return self.ner_cache / "progress.json"

    @property
    def decode(self) -> Path:
        """Fitted thresholds of the tuned decoding."""
        return self.root / "decode.json"

    @property
    def split(self) -> Path:
        """The held-out essays every second stage is scored on, and the training essays."""
        return self.root / "split.json"

    # --- gbdt step (the non-RL second stages: ner-constrained and gbdt) ------------------------
    @property
    def gbdt_dir(self) -> Path:
        """RUN/gbdt/, the gbdt step's folder (RUN/spans/ in a run written before the rename)."""
        return self.step_dir("gbdt")

    @property
    def heldout_recall(self) -> Path:
        """Per stage and type, the share of the held-out essays' true elements it finds
        (`tools/ship_model.py --check-data` writes it; the teacher's "not found" lines read it)."""
        return self.root / "heldout_recall.json"

    @property
    def gbdt_results(self) -> Path:
        """Held-out scores of the NER decodings, ner-constrained and gbdt; candidate recall."""
        return self.gbdt_dir / "results.json"

    @property
    def gbdt_tuned(self) -> Path:
        """ner-tuned's minima fitted on the training essays only (scored on the held-out ones)."""
        return self.gbdt_dir / "tuned.json"

    @property
    def tuned(self) -> Path:
        """The thresholds `ner-tuned` predicts with: the training essays' fit where the gbdt step
        ran (the protocol's deployed model), else the NER stage's fit on every essay."""
        return self.gbdt_tuned if self.gbdt_tuned.is_file() else self.decode

    @property
    def constrained(self) -> Path:
        """ner-constrained: the at-most-one classes and the per-class minima."""
        return self.gbdt_dir / "constrained.json"

    @property
    def gbdt(self) -> Path:
        """gbdt: the deployed model folder (the first seed's; `gbdt.gbdt.SpanModel.load`)."""
        return self.gbdt_dir / "gbdt"

    # --- a decoder trained in a step of its own ------------------------------------------------
    def decoder(self, name: str) -> Path:
        """The folder of a decoder trained in its own step (a plugin): what it saves, and its
        held-out rows (results.json)."""
        return self.step_dir(name)

    def decoder_results(self, name: str) -> Path:
        return self.decoder(name) / "results.json"

    # --- agent stage ---------------------------------------------------------------------------
    @property
    def segments(self) -> Path:
        return self.root / "segments.npz"

    @property
    def agent(self) -> Path:
        return self.root / "agent"

    @property
    def segments_config(self) -> Path:
        """The segmentation settings prediction must reuse."""
        return self.agent / "segments.toml"

    @property
    def agent_results(self) -> Path:
        return self.agent / "results.json"

    @property
    def agent_inputs(self) -> Path:
        """The key of the inputs agent/ was trained from (other inputs empty the folder)."""
        return self.agent / "inputs.json"

    def seed_dir(self, seed_index: int, seed: int) -> Path:
        """The first seed's policies live in agent/, later seeds' in agent/seed<s>/."""
        return self.agent if seed_index == 0 else self.agent / f"seed{seed}"

    @property
    def legacy_ppo(self) -> Path:
        """Format 1's PPO folder, named only to recognise a run folder of that format."""
        return self.agent / "rl"

    def seed_config(self, seed_index: int, seed: int) -> Path:
        """The agent settings one seed trained with (its seed included)."""
        return self.seed_dir(seed_index, seed) / "config.toml"

    def trainer_dir(self, trainer: str, seed_index: int = 0, seed: int = 0) -> Path:
        if trainer not in AGENT_TRAINERS:
            raise ValueError(f"unknown agent trainer {trainer!r}")
        return self.seed_dir(seed_index, seed) / trainer

    def policy(self, trainer: str, seed_index: int = 0, seed: int = 0) -> Path:
        return self.trainer_dir(trainer, seed_index, seed) / "policy.pt"

    def history(self, trainer: str, seed_index: int = 0, seed: int = 0) -> Path:
        return self.trainer_dir(trainer, seed_index, seed) / "history.json"

    def trainer_done(self, trainer: str, seed_index: int = 0, seed: int = 0) -> Path:
        """Written last by a finished trainer: its inputs' key and held-out score (resume)."""
        return self.trainer_dir(trainer, seed_index, seed) / "done.json"


@dataclass(frozen=True, init=False)
class FoldLayout(_Folder):
    """The files of one NER fold folder (`RUN/ner/fold<k>`, or any folder a study trains in)."""

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def head(self) -> Path:
        """Frozen mode: the head's weights."""
        return self.root / "head.safetensors"

    @property
    def model(self) -> Path:
        """Finetune mode: encoder and head weights."""
        return self.root / "model.safetensors"

    @property
    def oof(self) -> Path:
        """Word probabilities of the essays this fold held out."""
        return self.root / "oof.npz"

    @property
    def done(self) -> Path:
        """Frozen mode: what the finished fold was trained with (a match skips it)."""
        return self.root / "done.json"

    @property
    def checkpoint(self) -> Path:
        """Frozen mode: the head's training state after the last finished epoch."""
        return self.root / "checkpoint.pt"

    @property
    def checkpoints(self) -> Path:
        """Finetune mode: the transformers Trainer's checkpoint folder."""
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"


def _renamed(folder: Path, step: str, suffix: str) -> Path:
    """folder/<step><suffix>, or the path under the step's earlier name where only that one
    exists (a run written before the rename, `RENAMED_STEPS`)."""
    path = folder / f"{step}{suffix}"
    if path.exists():
        return path
    for old in _earlier_names(step):
        before = folder / f"{old}{suffix}"
        if before.exists():
            return before
    return path
