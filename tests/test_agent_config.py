"""The agent's settings in parts ([agent], [agent.network], [agent.bc], [agent.ppo]): they load
from a TOML file and back, the earlier flat names still load, a setting given both ways is
refused, and the agent step's key is what it was before the split (no run retrains)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from discourse_rl.core import rules
from discourse_rl.core.common import DiscourseRLError, config_from_dict, config_to_toml, load_toml
from discourse_rl.decoders.agent.config import AgentConfig, BcConfig, NetworkConfig, PpoConfig
from discourse_rl.run.config import RunConfig, load_run_config, packaged_config, write_run_config
from tests.tiny import assert_refused

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

FLAT_FIELDS = (
    "seed",
    "max_essays",
    "sim_noise",
    "max_segments",
    "d_model",
    "n_heads",
    "n_layers",
    "dim_feedforward",
    "dropout",
    "val_fraction",
    "bc_epochs",
    "bc_batch_essays",
    "bc_lr",
    "bc_weight_decay",
    "bc_class_weight",
    "ppo_timesteps",
    "value_warmup_steps",
    "value_warmup_lr",
    "n_envs",
    "n_steps",
    "batch_size",
    "n_epochs",
    "ppo_lr",
    "clip_range",
    "gae_lambda",
    "ent_coef",
    "vf_coef",
    "kl_beta",
    "kl_target",
    "reward",
    "eval_every",
    "progress_bar",
    "torch_threads",
)
"""The fields of the flat AgentConfig before the split, in its order."""

KEYS_BEFORE = {
    # name: (agent key, its legacy key (every setting hashed)), computed by commit 097cf29's
    # `pipeline.stage_keys` with the data key fixed at "0123456789abcdef".
    "demo": ("a66f72147ca7cf24", "cca6563b30822a76"),
    "reference": ("5d66b0a1c378e1f4", "d7e520e1642ab299"),
    "reference-frozen": ("ec9ba3f770207236", "3d77c2ba7ff5c17c"),
    "reference-gpu": ("cf52473d95d1d29f", "335a777410b5f019"),
    "reference-gpu-mpnet": ("f54cc19ae4ad3acf", "0d649df8f6d1f178"),
    "defaults": ("61157dd516b1fb45", "793ef39565c4a38d"),
}


def _changed() -> AgentConfig:
    return AgentConfig(
        max_essays=7,
        torch_threads=2,
        network=NetworkConfig(d_model=32, n_heads=2),
        bc=BcConfig(epochs=3, lr=2e-3),
        ppo=PpoConfig(timesteps=1000, lr=1e-5, reward="jaccard"),
    )


def test_every_part_setting_has_its_old_flat_name() -> None:
    parts = {"network": NetworkConfig, "bc": BcConfig, "ppo": PpoConfig}
    named = {(part, f.name) for part, cls in parts.items() for f in fields(cls)}
    assert set(AgentConfig.FLAT_NAMES.values()) == named
    assert AgentConfig.FLAT_NAMES["bc_epochs"] == ("bc", "epochs")
    assert AgentConfig.FLAT_NAMES["ppo_timesteps"] == ("ppo", "timesteps")
    assert AgentConfig.FLAT_NAMES["ppo_lr"] == ("ppo", "lr")
    assert AgentConfig.FLAT_NAMES["value_warmup_steps"] == ("ppo", "value_warmup_steps")
    assert AgentConfig.FLAT_NAMES["d_model"] == ("network", "d_model")


def test_keyed_settings_flatten_back_to_the_old_names() -> None:
    cfg = _changed()
    plain = rules.plain(cfg)
    assert sorted(plain) == sorted(FLAT_FIELDS)
    assert plain["bc_epochs"] == 3 and plain["ppo_lr"] == 1e-5 and plain["d_model"] == 32
    keyed = rules.keyed(cfg)
    assert sorted(keyed) == sorted(set(FLAT_FIELDS) - {"progress_bar", "torch_threads"})


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = _changed()
    text = config_to_toml(cfg)
    assert "[network]" in text and "[bc]" in text and "[ppo]" in text
    path = tmp_path / "agent.toml"
    path.write_text(text)
    assert config_from_dict(AgentConfig, load_toml(path)) == cfg

    run = RunConfig(agent=cfg)
    write_run_config(tmp_path / "run", run)
    written = (tmp_path / "run" / "config.toml").read_text()
    for table in ("[agent]", "[agent.network]", "[agent.bc]", "[agent.ppo]"):
        assert f"\n{table}\n" in written
    assert load_run_config(tmp_path / "run" / "config.toml") == run


def test_old_flat_names_still_load(tmp_path: Path) -> None:
    flat = tmp_path / "flat.toml"
    flat.write_text(
        "[agent]\nmax_essays = 7\ntorch_threads = 2\nd_model = 32\nn_heads = 2\n"
        'bc_epochs = 3\nbc_lr = 2e-3\nppo_timesteps = 1000\nppo_lr = 1e-5\nreward = "jaccard"\n'
    )
    parts = tmp_path / "parts.toml"
    parts.write_text(
        "[agent]\nmax_essays = 7\ntorch_threads = 2\n\n[agent.network]\nd_model = 32\nn_heads = 2\n"
        "\n[agent.bc]\nepochs = 3\nlr = 2e-3\n\n"
        '[agent.ppo]\ntimesteps = 1000\nlr = 1e-5\nreward = "jaccard"\n'
    )
    mixed = tmp_path / "mixed.toml"
    mixed.write_text("[agent]\nbc_epochs = 3\n\n[agent.bc]\nlr = 2e-3\n")
    assert load_run_config(flat).agent == _changed() == load_run_config(parts).agent
    assert load_run_config(mixed).agent.bc == BcConfig(epochs=3, lr=2e-3)
    # A bad value given by its old name is named where it lives now.
    bad, text = tmp_path / "bad.toml", "[agent]\nbc_lr = 0\n"
    assert_refused(bad, text, load_run_config, r"bad.toml: \[agent.bc\] lr = 0.0: must be > 0")


def test_a_setting_given_both_ways_is_refused(tmp_path: Path) -> None:
    both = tmp_path / "both.toml"
    both.write_text("[agent]\nbc_epochs = 3\n\n[agent.bc]\nepochs = 4\n")
    with pytest.raises(DiscourseRLError) as err:
        load_run_config(both)
    line = str(err.value)
    assert "\n" not in line
    assert line == (
        f"{both}: [agent] bc_epochs and [agent.bc] epochs are the same setting; "
        "give it once (as [agent.bc] epochs)"
    )


@pytest.mark.parametrize("name", sorted(KEYS_BEFORE))
def test_the_agent_steps_key_is_unchanged(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from discourse_rl.run import pipeline

    monkeypatch.setattr(pipeline, "data_key", lambda corpus: "0123456789abcdef")
    if name == "defaults":
        cfg = RunConfig()
    else:
        cfg = load_run_config(CONFIGS / f"{name}.toml")
        if name == "demo":
            assert load_run_config(packaged_config("demo")) == cfg
    keys = pipeline.stage_keys(None, cfg)  # type: ignore[arg-type]
    legacy = pipeline.stage_keys(None, cfg, legacy=True)  # type: ignore[arg-type]
    assert (keys["agent"], legacy["agent"]) == KEYS_BEFORE[name]
