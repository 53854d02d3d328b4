"""Issue 15, CPU speed: the OpenMP wait policy set before torch loads, the benchmark's busy
background process, int8 inference, and fine-tuning from cached frozen-layer states."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.background import busy_background
from discourse_rl.core.data import load_word_probs
from discourse_rl.core.layout import RunLayout
from discourse_rl.ner import NerConfig, train_ner
from discourse_rl.ner.backbone import load_encoder, load_tokenizer
from discourse_rl.ner.frozen_states import UpperModel
from discourse_rl.ner.inference import Reading, for_inference, shared_depth, window_probs
from discourse_rl.ner.model import NerModel
from tests.tiny import tiny_cfg

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _child(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**base, "PYTHONPATH": SRC, "OMP_DISPLAY_ENV": "TRUE", **env},
        capture_output=True,
        text=True,
        check=True,
    )


# A local sitecustomize may set the variable already: the child clears it first, so that only
# the package can have set it when torch (and libgomp, which prints its settings) loads.
_LOAD = (
    "import os; os.environ.pop('OMP_WAIT_POLICY', None) if {clear} else None\n"
    "import discourse_rl.ner.model, torch\n"
    "torch.ones(64, 64) @ torch.ones(64, 64)\n"
    "print(os.environ['OMP_WAIT_POLICY'])\n"
)


def test_passive_openmp_threads_are_set_before_torch_loads() -> None:
    out = _child(_LOAD.format(clear=True))
    assert out.stdout.strip() == "PASSIVE"
    # libgomp read it when torch loaded (OMP_DISPLAY_ENV makes it print what it read).
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in out.stderr


def test_a_users_wait_policy_is_kept() -> None:
    out = _child(_LOAD.format(clear=False), OMP_WAIT_POLICY="ACTIVE")
    assert out.stdout.strip() == "ACTIVE"
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in out.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_background_process_is_killed_when_the_block_ends_even_on_error() -> None:
    with pytest.raises(RuntimeError), busy_background("nice19", seconds=60) as proc:
        assert proc.poll() is None
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == 19
        raise RuntimeError("benchmark failed")
    assert proc.returncode is not None and not _alive(proc.pid)


def test_background_process_ends_with_its_parent(tmp_path: Path) -> None:
    # A benchmark killed with SIGKILL runs no cleanup: the loop notices the parent is gone.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from benchmarks.background import start_busy\n"
        "print(start_busy('nice19', 60).pid, flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    parent = subprocess.Popen(
        [sys.executable, "-c", code, root], stdout=subprocess.PIPE, text=True, cwd=root
    )
    assert parent.stdout is not None
    busy = int(parent.stdout.readline())
    assert _alive(busy)
    parent.kill()
    parent.wait()
    for _ in range(100):
        if not _alive(busy) or _zombie(busy):
            break
        time.sleep(0.1)
    assert not _alive(busy) or _zombie(busy)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return False


def test_int8_inference_stays_close_to_fp32(tiny_backbone: str, corpus_small) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    cfg = tiny_cfg(tiny_backbone, bf16=False)
    models = [NerModel(load_encoder(tiny_backbone), cfg).eval() for _ in range(2)]
    tok = load_tokenizer(tiny_backbone)
    essays = list(corpus_small.essays.values())[:4]
    cpu = torch.device("cpu")
    ref = window_probs(models, essays, Reading(tok, cfg, cpu))
    int8 = NerConfig(**{**cfg.__dict__, "infer_dtype": "int8"})
    ready = [for_inference(m, int8, cpu) for m in models]
    assert isinstance(
        ready[0].encoder.encoder.layer[0].output.dense, torch.ao.nn.quantized.dynamic.Linear
    )
    assert isinstance(models[0].encoder.encoder.layer[0].output.dense, torch.nn.Linear)
    assert shared_depth(ready) == 2  # quantised fold models still share their frozen layers
    out = window_probs(ready, essays, Reading(tok, int8, cpu, prepared=True))
    diffs = [float(np.abs(a - b).max()) for a, b in zip(out, ref, strict=True)]
    assert 0 < max(diffs) < 0.02
    with pytest.raises(ValueError, match="infer_dtype"):
        NerConfig(infer_dtype="int4")  # type: ignore[arg-type]


@pytest.mark.parametrize("bf16", [False, True])
def test_cached_frozen_states_train_as_the_full_model(
    tiny_backbone: str,
    corpus_small,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bf16: bool,  # type: ignore[no-untyped-def]
) -> None:
    corpus = corpus_small.subset(sorted(corpus_small.essays)[:6])
    cfg = tiny_cfg(
        tiny_backbone,
        mode="finetune",
        epochs=2.0,
        save_every=100,
        lr=1e-3,
        head_lr=1e-2,
        freeze_layers=1,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bf16=bf16,
        dropout=0.1,
    )
    plain = train_ner(corpus, cfg, tmp_path / "plain", seed=0)
    calls: list[int] = []
    upper_forward = UpperModel.forward

    @functools.wraps(upper_forward)  # the Trainer reads the signature
    def counted(self: UpperModel, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["hidden"].shape[0])
        return upper_forward(self, *args, **kwargs)

    monkeypatch.setattr(UpperModel, "forward", counted)
    cached = train_ner(
        corpus, NerConfig(**{**cfg.__dict__, "cache_frozen": True}), tmp_path / "cached", seed=0
    )
    a, b = load_word_probs(plain.oof_path), load_word_probs(cached.oof_path)
    assert calls  # the cached path trained
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[i].astype(np.float32) - b[i]).max()) for i in a)
    # fp32: the same computation up to summation order; bf16: the cached states are rounded to
    # bf16, as autocast rounds them for the next layer's matrix products anyway.
    assert worst < (0.02 if bf16 else 1e-3), worst
    from safetensors.torch import load_file

    wa = load_file(str(RunLayout(tmp_path / "plain").fold(0).model))
    wb = load_file(str(RunLayout(tmp_path / "cached").fold(0).model))
    assert wa.keys() == wb.keys()
    moved = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    print(f"bf16={bf16}: probabilities {worst:.2e}, weights {moved:.2e}")
    assert moved < (1e-2 if bf16 else 1e-5), moved
    assert not RunLayout(tmp_path / "cached").ner_frozen_states.exists()  # removed at the end


def test_cached_frozen_states_need_no_dropout_in_the_frozen_part(tiny_backbone: str) -> None:
    with pytest.raises(ValueError, match="hidden_dropout = 0"):
        tiny_cfg(tiny_backbone, mode="finetune", freeze_layers=1, cache_frozen=True)
