"""agent-gbdt and combine as decoders with steps of their own: each fits on tiny simulated
probabilities, saves into a run folder, loads back and predicts the same spans; combine takes
each class from its chosen member."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from discourse_rl.core import rules
from discourse_rl.core.data import CLASSES, load_corpus
from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders import registry
from discourse_rl.decoders.agent.config import AgentConfig, BcConfig, NetworkConfig
from discourse_rl.decoders.agent.episode import EpisodeConfig
from discourse_rl.decoders.agent.gbdt_decoder import AgentGbdtConfig, AgentGbdtDecoder
from discourse_rl.decoders.combined import CombineConfig, CombineDecoder, _members
from discourse_rl.decoders.gbdt import gbdt
from discourse_rl.decoders.gbdt.decoder import GbdtDecoder
from discourse_rl.decoders.gbdt.model import GbdtConfig
from discourse_rl.decoders.segments import SegmentConfig, simulate_word_probs
from discourse_rl.run.config import RunConfig

SETTINGS = RunConfig(
    gbdt=dataclasses.replace(GbdtConfig(), n_estimators=10, num_threads=1, min_child_samples=5),
    segments=SegmentConfig(max_segments=64, punctuation="clause", rich_features=True),
    agent=AgentConfig(
        network=NetworkConfig(
            max_segments=64, d_model=16, n_heads=2, n_layers=1, dim_feedforward=16
        ),
        bc=BcConfig(epochs=1),
    ),
    episode=EpisodeConfig(samples=4, batch_essays=8, passes=1.0, eval_every=1, progress_bar=False),
)
AGENT_GBDT = AgentGbdtConfig(enabled=True)


@pytest.fixture(scope="module")
def corpus():  # type: ignore[no-untyped-def]
    return load_corpus(None)


@pytest.fixture(scope="module")
def probs(corpus):  # type: ignore[no-untyped-def]
    return simulate_word_probs(corpus, noise=0.6, seed=3, ids=corpus.ids[:24])


def _split(corpus, probs):  # type: ignore[no-untyped-def]
    train, held = corpus.ids[:18], corpus.ids[18:24]
    return {i: probs[i] for i in train}, corpus.subset(train), held


def _context(tmp: Path, name: str) -> registry.RunContext:
    scratch = tmp / "scratch" / name
    scratch.mkdir(parents=True)
    return registry.RunContext(tmp / "run", SETTINGS, scratch)


def _run_folder(tmp: Path) -> RunLayout:
    lay = RunLayout(tmp / "run")
    lay.ner_config.parent.mkdir(parents=True, exist_ok=True)
    lay.ner_config.write_text("{}\n")  # `saved` asks for the tagger's config
    return lay


def _save(dec: registry.Decoder, lay: RunLayout) -> None:
    folder = lay.decoder(dec.name)
    folder.mkdir(parents=True, exist_ok=True)
    dec.save(folder)


def test_configs_default_off_and_check_values() -> None:
    assert not AgentGbdtConfig().enabled and not CombineConfig().enabled
    assert not AgentGbdtDecoder.enabled(AgentGbdtConfig())
    assert CombineDecoder.enabled(CombineConfig(enabled=True))
    assert AgentGbdtDecoder.seeds(AgentGbdtConfig(), (3, 4)) == (3,)
    assert AgentGbdtDecoder.seeds(AgentGbdtConfig(all_seeds=True), (3, 4)) == (3, 4)
    with pytest.raises(rules.ConfigValueError, match="clone"):
        AgentGbdtConfig(clone="teacher")
    with pytest.raises(rules.ConfigValueError, match="members"):
        CombineConfig(members=("gbdt",))
    with pytest.raises(rules.ConfigValueError, match="members"):
        CombineConfig(members=("gbdt", "ppo"))  # no refit for PPO
    assert {"agent-gbdt", "combine"} <= set(registry.names())
    assert AgentGbdtDecoder.own_step() and CombineDecoder.own_step()


@pytest.mark.slow
def test_agent_gbdt_fits_saves_loads_and_predicts(corpus, probs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    train_probs, train, held = _split(corpus, probs)
    ctx = _context(tmp_path, "agent-gbdt")
    model = AgentGbdtDecoder.fit_in_run(train_probs, train, AGENT_GBDT, 0, ctx)
    lay = _run_folder(tmp_path)
    assert AgentGbdtDecoder.saved(lay) is None
    _save(model, lay)
    assert AgentGbdtDecoder.saved(lay) == lay.decoder("agent-gbdt")
    names = {p.relative_to(lay.root).as_posix() for p in AgentGbdtDecoder.files(lay)}
    assert {"agent-gbdt/policy.pt", "agent-gbdt/segments.toml"} <= names
    assert "agent-gbdt/gbdt/params.json" in names
    loaded = AgentGbdtDecoder.load(lay.root)
    held_probs = {i: probs[i] for i in held}
    essays = {i: corpus.essays[i] for i in held}
    got = loaded.predict(held_probs, essays)
    assert got == model.predict(held_probs, essays)
    assert set(got) == set(held) and any(got.values())
    for k, spans in got.items():
        assert all(0 <= s < e <= len(probs[k]) and 0 <= c < len(CLASSES) for c, s, e in spans)

    # An essay with more segments than the policy has rows keeps gbdt's labelling.
    gbdt_only = AgentGbdtDecoder.load(lay.root)
    policy = gbdt_only.model[2]
    policy.config = dataclasses.replace(policy.config, max_segments=1)
    want = GbdtDecoder(loaded.model[1]).predict(held_probs, essays)
    assert gbdt_only.predict(held_probs, essays) == want


@pytest.mark.slow
def test_combine_chooses_per_class_and_predicts_from_its_members(  # type: ignore[no-untyped-def]
    corpus, probs, tmp_path: Path
) -> None:
    train_probs, train, held = _split(corpus, probs)
    lay = _run_folder(tmp_path)
    # The run's members, trained on every training essay: gbdt (the gbdt step's) and agent-gbdt.
    gbdt.fit(train_probs, train, list(train_probs), SETTINGS.gbdt).save(lay.gbdt)
    agent_gbdt = AgentGbdtDecoder.fit_in_run(
        train_probs, train, AGENT_GBDT, 0, _context(tmp_path, "member")
    )
    _save(agent_gbdt, lay)
    config = CombineConfig(enabled=True, members=("gbdt", "episode", "agent-gbdt"), folds=2)
    model = CombineDecoder.fit_in_run(train_probs, train, config, 0, _context(tmp_path, "comb"))
    record = model.model[0]
    assert record["members"] == ["gbdt", "agent-gbdt"]  # no episode policy in this run
    assert set(record["member"]) == set(CLASSES) and record["inner_essays"] == 18
    assert set(record["oof_f1"]) == {"gbdt", "agent-gbdt"}
    assert CombineDecoder.saved(lay) is None
    _save(model, lay)
    assert CombineDecoder.saved(lay) == lay.decoder("combine") / "choice.json"
    chosen = set(record["member"].values())
    files = {p.relative_to(lay.root).as_posix() for p in CombineDecoder.files(lay)}
    assert "combine/choice.json" in files
    assert ("gbdt" in chosen) == ("gbdt/gbdt/params.json" in files)
    assert ("agent-gbdt" in chosen) == ("agent-gbdt/policy.pt" in files)

    held_probs = {i: probs[i] for i in held}
    essays = {i: corpus.essays[i] for i in held}
    loaded = CombineDecoder.load(lay.root)
    got = loaded.predict(held_probs, essays)
    assert got == model.predict(held_probs, essays)
    # Each class's spans are its chosen member's.
    by_member = {m: registry.get(m).load(lay.root).predict(held_probs, essays) for m in chosen}
    for k in held:
        want = sorted(
            (sp for m in chosen for sp in by_member[m][k] if record["member"][CLASSES[sp[0]]] == m),
            key=lambda x: (x[1], x[0]),
        )
        assert got[k] == want

    # Fewer than two members trained: one clear line.
    with pytest.raises(Exception, match="two are needed"):
        CombineDecoder.fit_in_run(
            train_probs,
            train,
            CombineConfig(enabled=True, members=("episode", "bc")),
            0,
            _context(tmp_path, "none"),
        )


def test_combine_refits_the_agent_on_inner_folds(corpus, probs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    train_probs, train, _ = _split(corpus, probs)
    fitters = _members(["episode"], train_probs, train, 0, _context(tmp_path, "episode"))
    ids = sorted(train_probs)
    predict: Any = fitters["episode"](ids[:9])
    frame = predict(ids[9:])
    assert set(frame["id"]) <= set(ids[9:])
    assert set(frame["class"]) <= set(CLASSES)
    assert json.dumps(list(frame.columns))  # a plain table
