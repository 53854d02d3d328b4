"""The precision chosen by measuring the machine (`ner.precision`): the choice with the probe's
results injected (native bf16, emulated bf16, no bf16), forced settings, the cache and its
invalidation, the wiring into inference and training, and `info --machine`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from discourse_rl.core.common import DiscourseRLError, config_from_dict
from discourse_rl.ner import NerConfig, precision
from discourse_rl.ner.precision import Machine, Rates, Shape, choose

# Probe results as the three kinds of CPU give them (tokens/s per core).
NATIVE = Rates({"fp32": 3000.0, "bf16": 5200.0, "int8": 5900.0}, {"fp32": 1000.0, "bf16": 1400.0})
"""AMD EPYC with avx512_bf16 (this project's machine): bf16 about 2x fp32."""
EMULATED = Rates({"fp32": 4000.0, "bf16": 900.0, "int8": 7000.0}, {"fp32": 1300.0, "bf16": 350.0})
"""Intel Xeon with AVX-512 and VNNI but no avx512_bf16: bf16 emulated, 4.4x slower."""
NO_BF16 = Rates({"fp32": 2000.0}, {"fp32": 700.0})
"""A CPU (or torch build) where the probe could run nothing but fp32."""

AMD = Machine("AMD EPYC", ("avx2", "avx512f", "avx512_vnni", "avx512_bf16"), 2, "2.13.0+cpu")
XEON = Machine("Intel Xeon", ("avx2", "avx512f", "avx512_vnni"), 2, "2.13.0+cpu")
SMALL = Shape(hidden=32, intermediate=64, heads=2, layers=2, tokens=16)


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test: its own cache folder, no measurement remembered, nothing said yet."""
    monkeypatch.setenv("DISCOURSE_RL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(precision.QUIET_ENV, raising=False)
    precision.forget()
    yield
    precision.forget()


# ---------------------------------------------------------------------------------------------
# The choice


def test_auto_takes_bf16_where_native_and_fp32_where_emulated_or_absent() -> None:
    native = choose(NATIVE)
    assert (native.train, native.infer, native.forced_slower) == ("bf16", "bf16", None)
    emulated = choose(EMULATED)
    assert (emulated.train, emulated.infer, emulated.forced_slower) == ("fp32", "fp32", None)
    absent = choose(NO_BF16)
    assert (absent.train, absent.infer) == ("fp32", "fp32")
    assert native.why == emulated.why == {"train": "auto", "infer": "auto"}


def test_auto_needs_a_clear_gain_and_keeps_int8_unless_allowed() -> None:
    tie = Rates({"fp32": 1000.0, "bf16": 1030.0}, {"fp32": 500.0, "bf16": 510.0})
    assert (choose(tie).train, choose(tie).infer) == ("fp32", "fp32")  # within 5%: fp32
    assert choose(EMULATED).infer == "fp32"  # int8 is fastest but not chosen by default
    assert choose(EMULATED, int8_auto=True).infer == "int8"
    assert choose(NATIVE, int8_auto=True).infer == "int8"


@pytest.mark.parametrize("rates", [NATIVE, EMULATED, NO_BF16])
def test_forced_settings_are_honoured(rates: Rates) -> None:
    on = choose(rates, bf16=True)
    assert (on.train, on.infer) == ("bf16", "bf16") and on.why["train"] == "forced"
    off = choose(rates, bf16=False)
    assert (off.train, off.infer) == ("fp32", "fp32")
    assert choose(rates, infer_dtype="int8").infer == "int8"
    assert choose(rates, bf16=True, infer_dtype="fp32").infer == "fp32"
    assert choose(rates, bf16=True, infer_dtype="fp32").train == "bf16"


def test_a_forced_setting_slower_here_says_so_in_one_line() -> None:
    slow_on = choose(EMULATED, bf16=True).forced_slower
    assert slow_on is not None and "\n" not in slow_on
    assert "bf16 = true" in slow_on and "training in bf16 350" in slow_on
    assert "inference in bf16 900" in slow_on and "4.4x" in slow_on
    slow_off = choose(NATIVE, bf16=False).forced_slower
    assert slow_off is not None and "bf16 = false" in slow_off and "\n" not in slow_off
    # Forced the way auto would go anyway: nothing to say.
    assert choose(NATIVE, bf16=True).forced_slower is None
    assert choose(EMULATED, bf16=False).forced_slower is None
    assert choose(EMULATED, infer_dtype="int8").forced_slower is None  # int8 is faster there
    assert "infer_dtype" in (choose(NATIVE, infer_dtype="fp32").forced_slower or "")


def test_the_line_is_said_once_per_run(capsys: pytest.CaptureFixture[str]) -> None:
    choice = choose(EMULATED, bf16=True)
    lines: list[str] = []
    assert precision.say_once(choice, lines.append)
    assert not precision.say_once(choice, lines.append)
    assert lines == [choice.forced_slower]
    assert not precision.say_once(choose(NATIVE, bf16=True))  # nothing to say anyway


def test_gpu_takes_bf16_without_a_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    gpu = precision.resolve(NerConfig(), torch.device("cuda"))
    assert (gpu.train, gpu.infer) == ("bf16", "bf16")
    off = precision.resolve(NerConfig(bf16=False, infer_dtype="int8"), torch.device("cuda"))
    assert (off.train, off.infer) == ("fp32", "fp32")


# ---------------------------------------------------------------------------------------------
# The cache


class Counting:
    """A stand-in probe: returns `rates` and counts its calls."""

    def __init__(self, rates: Rates) -> None:
        self.rates, self.calls = rates, 0

    def __call__(self, shape: Shape) -> Rates:
        self.calls += 1
        return self.rates


def test_measured_once_then_read_from_the_cache(tmp_path: Path) -> None:
    probe = Counting(NATIVE)
    first = precision.measured(SMALL, machine=AMD, measure=probe)
    assert not first.cached and probe.calls == 1
    assert first.path.parent == tmp_path / "cache" / "precision" and first.path.is_file()
    assert precision.measured(SMALL, machine=AMD, measure=probe).rates == NATIVE
    precision.forget()  # a new process: reads the file, measures nothing
    again = precision.measured(SMALL, machine=AMD, measure=probe)
    assert again.cached and again.rates == NATIVE and probe.calls == 1
    precision.measured(SMALL, machine=AMD, measure=probe, refresh=True)
    assert probe.calls == 2


@pytest.mark.parametrize(
    "change",
    [
        {"torch": "2.14.0+cpu"},
        {"cpu": "AMD EPYC 9004"},
        {"flags": ("avx2", "avx512f")},
        {"cores": 16},
    ],
)
def test_another_machine_or_torch_measures_again(change: dict[str, object]) -> None:
    probe = Counting(NATIVE)
    precision.measured(SMALL, machine=AMD, measure=probe)
    precision.forget()
    other = dataclasses.replace(AMD, **change)  # type: ignore[arg-type]
    m = precision.measured(SMALL, machine=other, measure=probe)
    assert not m.cached and probe.calls == 2
    assert m.path != precision.cache_path(AMD, SMALL)


def test_another_shape_a_damaged_file_or_a_new_probe_measure_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probe = Counting(EMULATED)
    first = precision.measured(SMALL, machine=XEON, measure=probe)
    precision.forget()
    precision.measured(dataclasses.replace(SMALL, hidden=64), machine=XEON, measure=probe)
    assert probe.calls == 2
    for damage in ("{not json", json.dumps({"version": precision.PROBE_VERSION})):
        precision.forget()
        first.path.write_text(damage, encoding="utf-8")
        assert not precision.measured(SMALL, machine=XEON, measure=probe).cached
    assert probe.calls == 4
    precision.forget()
    monkeypatch.setattr(precision, "PROBE_VERSION", precision.PROBE_VERSION + 1)
    assert not precision.measured(SMALL, machine=XEON, measure=probe).cached
    assert probe.calls == 5


def test_a_file_of_another_machine_under_this_key_is_not_trusted() -> None:
    probe = Counting(NATIVE)
    m = precision.measured(SMALL, machine=AMD, measure=probe)
    record = json.loads(m.path.read_text(encoding="utf-8"))
    record["machine"]["cpu"] = "something else"
    m.path.write_text(json.dumps(record), encoding="utf-8")
    precision.forget()
    assert not precision.measured(SMALL, machine=AMD, measure=probe).cached


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCOURSE_RL_CACHE", "/x/y")
    assert precision.cache_root() == Path("/x/y")
    monkeypatch.delenv("DISCOURSE_RL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert precision.cache_root() == Path("/xdg/discourse-rl")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert precision.cache_root() == Path.home() / ".cache" / "discourse-rl"


def test_an_unwritable_cache_still_gives_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCOURSE_RL_CACHE", "/proc/no-such-place")
    assert precision.measured(SMALL, machine=AMD, measure=Counting(NATIVE)).rates == NATIVE


# ---------------------------------------------------------------------------------------------
# The machine and the probe


def test_this_machine_is_described_without_torch_and_named_stably() -> None:
    m = precision.this_machine()
    assert m.cpu and m.cores >= 1 and m.torch == torch.__version__
    assert set(m.flags) <= set(precision.FLAGS_THAT_MATTER)
    assert precision.cache_key(m, Shape()) == precision.cache_key(m, Shape())
    assert AMD.native_bf16 and not XEON.native_bf16 and XEON.int8_dot


def test_the_probe_measures_every_precision_quickly() -> None:
    rates = precision.probe(SMALL, rounds=2)
    assert {"fp32", "bf16"} <= set(rates.infer) and set(rates.train) == {"fp32", "bf16"}
    assert all(v > 0 for v in [*rates.infer.values(), *rates.train.values()])
    assert rates.seconds < 5
    assert Rates.from_json(json.loads(json.dumps(rates.to_json()))) == rates


def test_shape_of_a_model_a_folder_and_a_config(tiny_backbone: str) -> None:
    from discourse_rl.ner.backbone import load_encoder
    from discourse_rl.ner.model import NerModel

    enc = load_encoder(tiny_backbone)
    want = Shape(hidden=32, intermediate=64, heads=2, layers=2)
    assert Shape.of(tiny_backbone) == Shape.of(enc) == want
    assert Shape.of(NerModel(enc, NerConfig(head_hidden=8))) == want
    assert Shape.of(None) == Shape.of("/no/such/folder") == Shape()
    assert Shape.of(enc.config).hidden == 32


# ---------------------------------------------------------------------------------------------
# The setting: config, stage keys, wiring


def test_bf16_setting_reads_auto_true_false_and_nothing_else() -> None:
    assert NerConfig().bf16 == "auto"
    for value in ("auto", True, False):
        assert config_from_dict(NerConfig, {"bf16": value}).bf16 == value
    for bad in ("yes", 1, 0.0):
        with pytest.raises(DiscourseRLError, match="bf16"):
            config_from_dict(NerConfig, {"bf16": bad})


def test_the_precision_never_changes_a_stage_key(corpus_small) -> None:  # type: ignore[no-untyped-def]
    from discourse_rl.ner.run import inputs_key
    from discourse_rl.run.config import RunConfig
    from discourse_rl.run.pipeline import stage_keys

    base = RunConfig()
    keys = {
        json.dumps(stage_keys(corpus_small, dataclasses.replace(base, ner=ner)))
        for ner in (
            dataclasses.replace(base.ner, bf16="auto"),
            dataclasses.replace(base.ner, bf16=True),
            dataclasses.replace(base.ner, bf16=False),
        )
    }
    assert len(keys) == 1
    other = dataclasses.replace(base, ner=dataclasses.replace(base.ner, epochs=base.ner.epochs + 1))
    assert json.dumps(stage_keys(corpus_small, other)) not in keys
    # Older runs recorded bf16 = true (the old default): their keys stay as they were.
    from discourse_rl.core import rules

    assert rules.plain(base.ner) == rules.plain(dataclasses.replace(base.ner, bf16=True))
    assert "bf16" not in rules.keyed(base.ner)
    ner = base.ner
    assert inputs_key(corpus_small, ner, 0) == inputs_key(
        corpus_small, dataclasses.replace(ner, bf16=False), 0
    )


def _inject(monkeypatch: pytest.MonkeyPatch, rates: Rates) -> None:
    def fake(shape: Shape | None = None, **_: object) -> precision.Measured:
        return precision.Measured(AMD, shape or Shape(), rates, True, Path("/dev/null"))

    monkeypatch.setattr(precision, "measured", fake)


@pytest.mark.parametrize(
    ("rates", "bf16", "want"),
    [
        (NATIVE, "auto", torch.bfloat16),
        (EMULATED, "auto", torch.float32),
        (NO_BF16, "auto", torch.float32),
        (EMULATED, True, torch.bfloat16),
        (NATIVE, False, torch.float32),
    ],
)
def test_inference_weights_and_training_autocast_follow_the_choice(
    tiny_backbone: str, monkeypatch: pytest.MonkeyPatch, rates: Rates, bf16: object, want: object
) -> None:
    from discourse_rl.core.layout import RunLayout
    from discourse_rl.ner.backbone import load_encoder
    from discourse_rl.ner.finetune import training_arguments
    from discourse_rl.ner.inference import for_inference
    from discourse_rl.ner.model import NerModel

    _inject(monkeypatch, rates)
    cfg = NerConfig(backbone=tiny_backbone, head_hidden=8, bf16=bf16)  # type: ignore[arg-type]
    cpu = torch.device("cpu")
    model = NerModel(load_encoder(tiny_backbone), cfg)
    ready = for_inference(model, cfg, cpu)
    assert {p.dtype for p in ready.encoder.parameters()} == {want}
    assert precision.train_bf16(cfg, cpu, model) == (want == torch.bfloat16)
    fold = RunLayout(Path("/tmp/unused")).fold(0)
    args = training_arguments(cfg, fold, cpu, 0, precision.train_bf16(cfg, cpu, model))
    assert args.bf16 == (want == torch.bfloat16)


def test_no_library_is_asked_whether_bf16_is_supported() -> None:
    from discourse_rl.ner import finetune, inference

    for module in (inference, finetune, precision):
        source = Path(module.__file__ or "").read_text(encoding="utf-8")
        assert "_is_mkldnn_bf16_supported" not in source


# ---------------------------------------------------------------------------------------------
# What users see


def test_announce_says_one_line_and_the_forced_cost_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _inject(monkeypatch, EMULATED)
    lines: list[str] = []
    auto = precision.announce(NerConfig(), torch.device("cpu"), lines.append)
    assert (auto.train, auto.infer) == ("fp32", "fp32") and len(lines) == 1
    assert lines[0].startswith("precision: AMD EPYC") and "chosen: training fp32" in lines[0]
    assert capsys.readouterr().err == ""
    precision.announce(NerConfig(bf16=True), torch.device("cpu"), lines.append)
    precision.announce(NerConfig(bf16=True), torch.device("cpu"), lines.append)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "bf16 = true is slower on this machine" in err[0]


def test_info_machine(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from discourse_rl.app.cli import main

    _inject(monkeypatch, EMULATED)
    assert main(["info", "--machine"]) == 0
    out = capsys.readouterr().out
    assert "AMD EPYC" in out and "chosen        training fp32, inference fp32" in out
    assert main(["info", "--machine", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["rates"] == dict(EMULATED.infer) and got["chosen"] == {
        "train": "fp32",
        "infer": "fp32",
    }
    assert got["cpu"] == "AMD EPYC" and got["flags"] == list(AMD.flags)


def test_benchmark_prints_the_issue_s_json_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import precision as bench

    _inject(monkeypatch, EMULATED)
    bench.main(["--quick", "--json"])
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    got = json.loads(out)
    assert {"cpu", "flags", "rates", "chosen"} <= set(got)
    assert set(got["rates"]) == {"fp32", "bf16", "int8"}
    assert got["chosen"] == {"train": "fp32", "infer": "fp32"}
    assert got["chosen_share"] == {"train": 1.0, "infer": 1.0}
