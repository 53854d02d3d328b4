"""Which precision to compute in, chosen by measuring this machine rather than by asking a
library whether bf16 is "supported" (on CPUs without native bf16 it is emulated and 4x slower).

Three parts, kept apart so that tests can inject any of them:

* `Machine`: what the CPU is (model, the flags that matter, cores, torch version), read without
  importing torch. Its `key` (with the probe's shapes) names the cached measurement.
* `probe`: a fraction of a second of arithmetic at the backbone's shapes (the four matrix
  products and the attention call of one encoder layer) in each precision the device offers:
  fp32, bf16 weights and int8 dynamic quantisation for inference, fp32 and bf16 autocast for a
  training step (forward and backward). The precisions take turns, several rounds, and each
  keeps its fastest round, timed in the thread's own CPU time on one thread: other jobs on the
  cores slow every precision alike, so their ratio stays. `Rates` turns the times into tokens/s
  of the whole backbone's forward pass (or training step) on one core.
* `choose`: the config's settings (`bf16 = "auto" | true | false`, `infer_dtype`) and the rates
  -> the precision of training and of inference, and one line when a forced setting is slower
  here than the alternative.

The measurement is cached per machine key under `cache_root()/precision/` (`$DISCOURSE_RL_CACHE`,
else `$XDG_CACHE_HOME/discourse-rl`, else `~/.cache/discourse-rl`). The choice is a runtime
setting: it never enters a stage key (`NerConfig.keyed`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from discourse_rl.core.common import atomic_write_text

if TYPE_CHECKING:
    # torch loads only when measuring: `info --machine` reads the cache without it
    import torch
    from torch import nn

    from discourse_rl.ner.config import NerConfig

Precision = Literal["fp32", "bf16", "int8"]
Bf16Setting = Literal["auto", True, False]

PROBE_VERSION = 1
"""Bumped when the probe measures something else: older cached rates are then measured again."""

FLAGS_THAT_MATTER = (
    # x86: vector width, int8 dot products (VNNI), native bf16 (AVX512-BF16, AMX)
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx_vnni_int8",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    # Arm: bf16 and int8 matrix instructions, scalable vectors
    "asimddp",
    "bf16",
    "i8mm",
    "sve",
    "sve2",
)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
"""Any of these: the CPU computes bf16 products itself (else oneDNN emulates them in fp32)."""

TIE = 1.05
"""A lower precision is chosen only when it measured at least this much faster than fp32 (5%:
within the probe's noise fp32, the exact one, wins)."""

INT8_AUTO = False
"""Whether `bf16 = "auto"` may choose int8 for inference where it measures fastest. Not while
int8 dynamic quantisation costs more than 0.003 out-of-fold F1 on a fine-tuned model
(docs/ner.md, "Precision")."""

QUIET_ENV = "DISCOURSE_RL_PRECISION_SAID"
"""Set once this process has said what a forced setting costs; child processes inherit it and
stay quiet, so a run says it once."""


# ---------------------------------------------------------------------------------------------
# The machine


@dataclass(frozen=True)
class Machine:
    """What the probe's result depends on."""

    cpu: str
    flags: tuple[str, ...]
    """The flags of `FLAGS_THAT_MATTER` the CPU has, in that order."""
    cores: int
    """CPUs this process may run on."""
    torch: str

    @property
    def native_bf16(self) -> bool:
        return any(f in self.flags for f in NATIVE_BF16_FLAGS)

    @property
    def int8_dot(self) -> bool:
        """int8 dot-product instructions (VNNI, AMX-INT8, Arm dot product / i8mm)."""
        return any(f in self.flags for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp"))


def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and flags, from /proc/cpuinfo where there is one."""
    name, flags = "", set[str]()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return name or platform.processor() or platform.machine() or "unknown CPU", flags


def _torch_version() -> str:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "none"


def this_machine() -> Machine:
    """This machine, described without importing torch."""
    name, flags = _cpuinfo()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    present = tuple(f for f in FLAGS_THAT_MATTER if f in flags)
    return Machine(name, present, cores, _torch_version())


# ---------------------------------------------------------------------------------------------
# The probe


@dataclass(frozen=True)
class Shape:
    """The backbone's sizes the probe computes at (default: all-MiniLM-L6-v2's)."""

    hidden: int = 384
    intermediate: int = 1536
    heads: int = 12
    layers: int = 6
    tokens: int = 256
    """Sub-tokens of the probe's one sequence (half a window: the products are as efficient
    as at 512 and the probe twice as quick)."""

    @classmethod
    def of(cls, source: Any = None) -> Shape:
        """The shape of a model (an encoder, or a `NerModel` with `.encoder`), of a Hugging Face
        config, or of a backbone folder's config.json; the default for anything else."""
        config: Any = None
        if isinstance(source, str | Path):
            try:
                config = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                config = None
        elif isinstance(source, dict) or hasattr(source, "num_attention_heads"):
            config = source  # a config itself
        elif source is not None:
            encoder = getattr(source, "encoder", None)
            config = getattr(source, "config", None) or getattr(encoder, "config", None)
        if config is None:
            return cls()

        def get(*names: str) -> int | None:
            for name in names:
                value = (
                    config.get(name) if isinstance(config, dict) else getattr(config, name, None)
                )
                if isinstance(value, int) and value > 0:
                    return value
            return None

        hidden = get("hidden_size", "d_model", "dim")
        heads = get("num_attention_heads", "n_heads", "encoder_attention_heads")
        if hidden is None or heads is None or hidden % heads:
            return cls()
        return cls(
            hidden=hidden,
            intermediate=get("intermediate_size", "hidden_dim", "encoder_ffn_dim") or 4 * hidden,
            heads=heads,
            layers=get("num_hidden_layers", "n_layers", "encoder_layers") or 1,
        )


@dataclass(frozen=True)
class Rates:
    """Tokens/s of the backbone on one core: its forward pass per precision (`infer`) and a
    training step (forward and backward, `train`). A precision the device lacks is absent."""

    infer: Mapping[str, float]
    train: Mapping[str, float]
    seconds: float = 0.0
    """How long the probe took (wall time)."""

    def to_json(self) -> dict[str, Any]:
        return {"infer": dict(self.infer), "train": dict(self.train), "seconds": self.seconds}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Rates:
        def rates(x: Any) -> dict[str, float]:
            if not isinstance(x, dict):
                raise ValueError("rates must be a table")
            return {str(k): float(v) for k, v in x.items() if float(v) > 0}

        return cls(rates(d["infer"]), rates(d["train"]), float(d.get("seconds", 0.0)))


def _probe_layer(shape: Shape) -> nn.Module:
    """One encoder layer's arithmetic: the fused query/key/value product, the attention call,
    the output product, the feed-forward pair, two layer norms."""
    # torch loads only when measuring: `info --machine` reads the cache without it
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            h = shape.hidden
            self.qkv = nn.Linear(h, 3 * h)
            self.out = nn.Linear(h, h)
            self.up = nn.Linear(h, shape.intermediate)
            self.down = nn.Linear(shape.intermediate, h)
            self.norm1 = nn.LayerNorm(h)
            self.norm2 = nn.LayerNorm(h)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, h = x.shape
            q, k, v = (
                self.qkv(x).view(b, t, 3, shape.heads, h // shape.heads).permute(2, 0, 3, 1, 4)
            )
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            x = self.norm1(x + self.out(a.transpose(1, 2).reshape(b, t, h)))
            return self.norm2(x + self.down(torch.nn.functional.gelu(self.up(x))))  # type: ignore[no-any-return]

    return Layer()


def _int8_copy(layer: nn.Module) -> nn.Module | None:
    """`layer` with its linear layers dynamically quantised, or None where torch has no int8
    engine."""
    import warnings

    # torch loads only when measuring: `info --machine` reads the cache without it
    import torch
    from torch import nn

    if torch.backends.quantized.engine in ("none", ""):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized: nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                copy.deepcopy(layer), {nn.Linear}, dtype=torch.qint8
            )
        return quantized
    except (RuntimeError, AssertionError):
        return None


def probe(shape: Shape | None = None, rounds: int = 3, budget: float = 0.6) -> Rates:
    """Measure one encoder layer of `shape` in each precision on one thread: a warm-up call
    each, then `rounds` rounds taking turns (fewer, at least 2, once `budget` seconds are
    spent). Each precision's fastest round in thread CPU time -> tokens/s of the whole
    backbone."""

    # torch loads only when measuring: `info --machine` reads the cache without it
    import torch

    from discourse_rl.core.common import torch_threads

    shape = shape or Shape()
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    with torch_threads(1), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fp32 = _probe_layer(shape).eval()
        bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
        int8 = _int8_copy(fp32)
        trained = copy.deepcopy(fp32).train()
        x = torch.randn(1, shape.tokens, shape.hidden, generator=gen)
        x16 = x.to(torch.bfloat16)

        def infer(model: nn.Module, inputs: torch.Tensor) -> Callable[[], None]:
            def run() -> None:
                with torch.inference_mode():
                    model(inputs)

            return run

        def step(autocast: bool) -> Callable[[], None]:
            def run() -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    y = trained(x)
                y.float().square().mean().backward()  # type: ignore[no-untyped-call]
                trained.zero_grad(set_to_none=True)

            return run

        calls: dict[tuple[str, str], Callable[[], None]] = {
            ("infer", "fp32"): infer(fp32, x),
            ("infer", "bf16"): infer(bf16, x16),
            ("train", "fp32"): step(False),
            ("train", "bf16"): step(True),
        }
        if int8 is not None:
            calls[("infer", "int8")] = infer(int8, x)
        best = {k: float("inf") for k in calls}
        for r in range(rounds + 1):  # round 0 warms up (kernels are built at the first call)
            for k, call in calls.items():
                t0 = time.thread_time()
                call()
                if r > 0:
                    best[k] = min(best[k], time.thread_time() - t0)
            if r >= 2 and time.perf_counter() - start > budget:
                break
    per_token = {k: max(t, 1e-9) * shape.layers / shape.tokens for k, t in best.items()}
    rates: dict[str, dict[str, float]] = {"infer": {}, "train": {}}
    for (kind, precision), seconds in per_token.items():
        rates[kind][precision] = round(1.0 / seconds, 1)
    return Rates(rates["infer"], rates["train"], round(time.perf_counter() - start, 3))


# ---------------------------------------------------------------------------------------------
# The cache


def cache_root() -> Path:
    """`$DISCOURSE_RL_CACHE`, else `$XDG_CACHE_HOME/discourse-rl`, else ~/.cache/discourse-rl."""
    env = os.environ.get("DISCOURSE_RL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "discourse-rl"


def cache_key(machine: Machine, shape: Shape) -> str:
    text = json.dumps([PROBE_VERSION, asdict(machine), asdict(shape)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(machine: Machine, shape: Shape) -> Path:
    return cache_root() / "precision" / f"{cache_key(machine, shape)}.json"


@dataclass(frozen=True)
class Measured:
    """Rates measured on `machine`, from the cache or measured just now."""

    machine: Machine
    shape: Shape
    rates: Rates
    cached: bool
    path: Path


_MEMO: dict[tuple[Machine, Shape], Measured] = {}
"""This process's measurements: one choice per process even if the cache folder changes."""


def forget() -> None:
    """Drop this process's measurements (the next call reads the cache again)."""
    _MEMO.clear()


def _read(path: Path, machine: Machine, shape: Shape) -> Rates | None:
    """The cached rates at `path` if they were measured on this machine at this shape by this
    probe; None for anything else (missing, damaged, another machine or torch)."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if (
            d.get("version") != PROBE_VERSION
            or d.get("machine") != json.loads(json.dumps(asdict(machine)))
            or d.get("shape") != asdict(shape)
        ):
            return None
        return Rates.from_json(d["rates"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def measured(
    shape: Shape | None = None,
    *,
    machine: Machine | None = None,
    refresh: bool = False,
    measure: Callable[[Shape], Rates] = probe,
) -> Measured:
    """This machine's rates at `shape`: cached, else probed now and cached (a cache that cannot
    be written is skipped: the rates then last for this process)."""

    shape = shape or Shape()
    machine = machine or this_machine()
    path = cache_path(machine, shape)
    memo = (machine, shape)
    if not refresh:
        if memo in _MEMO:
            return _MEMO[memo]
        rates = _read(path, machine, shape)
        if rates is not None:
            _MEMO[memo] = Measured(machine, shape, rates, True, path)
            return _MEMO[memo]
    rates = measure(shape)
    record = {
        "version": PROBE_VERSION,
        "machine": asdict(machine),
        "shape": asdict(shape),
        "rates": rates.to_json(),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    except OSError:
        pass
    _MEMO[memo] = Measured(machine, shape, rates, False, path)
    return _MEMO[memo]


# ---------------------------------------------------------------------------------------------
# The choice


@dataclass(frozen=True)
class Choice:
    """The precision of training (autocast) and of inference (weights)."""

    train: Precision
    infer: Precision
    forced_slower: str | None = None
    """One line when a forced setting measured slower here than what `auto` would choose."""
    why: Mapping[str, str] = field(default_factory=dict)
    """Per kind ('train', 'infer'): 'auto', 'forced' or 'gpu'."""


def _faster(rates: Mapping[str, float], candidates: tuple[str, ...]) -> str:
    """The fastest of `candidates` (fp32 first) measured; a lower precision must beat fp32 by
    `TIE` to be chosen."""
    best = "fp32"
    for c in candidates:
        if c != "fp32" and rates.get(c, 0.0) > rates.get(best, 0.0) * TIE:
            best = c
    return best


def choose(
    rates: Rates,
    bf16: Bf16Setting = "auto",
    infer_dtype: str = "bf16",
    int8_auto: bool = False,
) -> Choice:
    """The CPU's precisions from the measured `rates` and the settings.

    `bf16`: 'auto' takes bf16 where it measured faster than fp32 (by `TIE`), `True` / `False`
    force it on / off, for training and for inference. `infer_dtype`: 'bf16' (the default)
    follows `bf16`; 'fp32' and 'int8' force that inference precision. `int8_auto`: 'auto' may
    also choose int8 for inference (only where its quality is known to hold)."""
    train_auto = _faster(rates.train, ("fp32", "bf16"))
    infer_options = ("fp32", "bf16", "int8") if int8_auto else ("fp32", "bf16")
    infer_auto = _faster(rates.infer, infer_options)
    why = {"train": "auto", "infer": "auto"}
    train: Precision = "bf16" if train_auto == "bf16" else "fp32"
    infer: Precision = (
        "bf16" if infer_auto == "bf16" else "int8" if infer_auto == "int8" else "fp32"
    )
    if bf16 != "auto":
        train = "bf16" if bf16 else "fp32"
        why["train"] = "forced"
    if infer_dtype in ("fp32", "int8"):
        infer = "fp32" if infer_dtype == "fp32" else "int8"
        why["infer"] = "forced"
    elif bf16 != "auto":
        infer = "bf16" if bf16 else "fp32"
        why["infer"] = "forced"
    slower = []
    for kind, chosen, auto, measured_rates in (
        ("training", train, train_auto, rates.train),
        ("inference", infer, infer_auto, rates.infer),
    ):
        mine, theirs = measured_rates.get(chosen, 0.0), measured_rates.get(auto, 0.0)
        if chosen != auto and mine > 0 and theirs > mine * TIE:
            slower.append(
                f"{kind} in {chosen} {mine:,.0f} tokens/s against {theirs:,.0f} in {auto} "
                f"({theirs / mine:.1f}x)"
            )
    note = None
    if slower:
        setting = f"bf16 = {_toml(bf16)}" + (
            f", infer_dtype = {_toml(infer_dtype)}" if infer_dtype != "bf16" else ""
        )
        note = (
            f"discourse-rl: precision: [ner] {setting} is slower on this machine than "
            f'bf16 = "auto" would be: {"; ".join(slower)} (per core, measured)'
        )
    return Choice(train, infer, note, why)


def _toml(value: Any) -> str:
    return json.dumps(value)


def _cuda_choice(device: torch.device, bf16: Bf16Setting, infer_dtype: str) -> Choice:
    """On a GPU: bf16 where the GPU has it (always faster there), unless forced off; int8
    inference is CPU only (bf16 instead), as before."""
    # torch loads only when measuring: `info --machine` reads the cache without it
    import torch

    has = bool(torch.cuda.is_bf16_supported())
    use = has and bf16 is not False
    low: Precision = "bf16" if use else "fp32"
    infer: Precision = "fp32" if infer_dtype == "fp32" else low
    return Choice(low, infer, None, {"train": "gpu", "infer": "gpu"})


def resolve(cfg: NerConfig, device: torch.device | None = None, model: Any = None) -> Choice:
    """The precisions `cfg` asks for on `device` (default: the CPU), measured at `model`'s
    shapes (a model, a backbone folder, or None for the config's backbone)."""
    if device is not None and device.type == "cuda":
        return _cuda_choice(device, cfg.bf16, cfg.infer_dtype)
    source = model if model is not None else _backbone_folder(cfg)
    rates = measured(Shape.of(source)).rates
    return choose(rates, cfg.bf16, cfg.infer_dtype, INT8_AUTO)


def _backbone_folder(cfg: NerConfig) -> str | None:
    """The config's backbone as a local folder, when it is one (its config.json gives the
    shapes); None for a hub name (the default shapes then)."""
    # the backbone module loads transformers: only when a config names one
    from discourse_rl.ner.backbone import resolve_backbone

    try:
        path = resolve_backbone(cfg.backbone)
    except Exception:  # a missing optional package: the default shapes will do
        return None
    return path if Path(path).is_dir() else None


def train_bf16(cfg: NerConfig, device: torch.device, model: Any = None) -> bool:
    """Whether training runs in bf16 autocast."""
    return resolve(cfg, device, model).train == "bf16"


def infer_precision(cfg: NerConfig, device: torch.device, model: Any = None) -> Precision:
    """The encoder's precision when predicting."""
    return resolve(cfg, device, model).infer


def say_once(choice: Choice, log: Callable[[str], None] | None = None) -> bool:
    """Log `choice.forced_slower` once per run: not again in this process nor in its
    children (they inherit `QUIET_ENV`). Returns whether it logged."""
    if choice.forced_slower is None or os.environ.get(QUIET_ENV):
        return False
    os.environ[QUIET_ENV] = "1"
    (log or _stderr)(choice.forced_slower)
    return True


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _rate_text(rates: Mapping[str, float]) -> str:
    return " / ".join(f"{k} {v:,.0f}" for k, v in rates.items())


def describe(m: Measured, choice: Choice) -> str:
    """One line: the CPU, its flags that matter, the probe's rates and the choice."""
    bf16 = "native bf16" if m.machine.native_bf16 else "no native bf16"
    flags = ",".join(m.machine.flags) or "none of note"
    source = "cached" if m.cached else f"probed in {m.rates.seconds:.2f} s"
    return (
        f"precision: {m.machine.cpu} ({m.machine.cores} cores, {bf16}; flags {flags}); "
        f"tokens/s per core ({source}): inference {_rate_text(m.rates.infer)}, "
        f"training {_rate_text(m.rates.train)}; chosen: training {choice.train} "
        f"({choice.why.get('train', '')}), inference {choice.infer} "
        f"({choice.why.get('infer', '')})"
    )


def announce(cfg: NerConfig, device: torch.device, log: Callable[[str], None] = print) -> Choice:
    """At a run's start: `describe`'s line through `log`, and the forced-slower line once
    (stderr). On a GPU, one line naming it. The caller names the device (the inference module,
    which knows it, reads this one)."""
    if device.type == "cuda":
        choice = resolve(cfg, device)
        log(f"precision: GPU, training {choice.train}, inference {choice.infer}")
        return choice
    m = measured(Shape.of(_backbone_folder(cfg)))
    choice = choose(m.rates, cfg.bf16, cfg.infer_dtype, INT8_AUTO)
    log(describe(m, choice))
    say_once(choice)
    return choice


def report_json(m: Measured, choice: Choice) -> dict[str, Any]:
    """What `info --machine --json` prints: the machine, the probe's rates, the choice."""
    return {
        "cpu": m.machine.cpu,
        "flags": list(m.machine.flags),
        "native_bf16": m.machine.native_bf16,
        "cores": m.machine.cores,
        "torch": m.machine.torch,
        "rates": dict(m.rates.infer),
        "train_rates": dict(m.rates.train),
        "rates_unit": "tokens/s of the backbone on one core (probe)",
        "chosen": {"train": choice.train, "infer": choice.infer},
        "probe_seconds": m.rates.seconds,
        "cached": m.cached,
        "cache": str(m.path),
    }


def report_lines(m: Measured, choice: Choice) -> list[str]:
    """What `info --machine` prints."""
    mach = m.machine
    native = "yes" if mach.native_bf16 else "no (emulated: slower than fp32 where measured so)"
    source = "cached" if m.cached else f"probed now in {m.rates.seconds:.2f} s"
    return [
        f"CPU           {mach.cpu}, {mach.cores} cores, torch {mach.torch}",
        f"flags         {' '.join(mach.flags) or '(none of those that matter)'}",
        f"native bf16   {native}",
        f"int8 dot      {'yes' if mach.int8_dot else 'no'}",
        f"inference     tokens/s per core: {_rate_text(m.rates.infer)}",
        f"training      tokens/s per core: {_rate_text(m.rates.train)}",
        f"measured      {source} ({m.path})",
        f"chosen        training {choice.train}, inference {choice.infer} "
        f'(bf16 = "auto"; a config\'s [ner] bf16 = true / false forces it)',
    ]
