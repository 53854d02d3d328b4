"""A tiny trained run folder for the labelling tests: a real NER stage on a few essays (tiny
random BERT), and untrained agent policies (the labelling path, not their quality, is tested)."""

from __future__ import annotations

from pathlib import Path

from tests.tiny import save_tiny_bert, tiny_cfg


def make_tiny_run(folder: Path) -> Path:
    from discourse_rl.core.common import atomic_write_text, config_to_toml
    from discourse_rl.core.data import CLASSES, load_corpus, load_word_probs
    from discourse_rl.core.layout import RunLayout
    from discourse_rl.core.records import AgentResults, HeldOutEssays, HeldOutScore, StageScores
    from discourse_rl.decoders.agent.config import AgentConfig, NetworkConfig
    from discourse_rl.decoders.agent.policy import make_policy, save_policy
    from discourse_rl.decoders.decode import DecodeConfig
    from discourse_rl.decoders.segments import SegmentConfig, make_segments
    from discourse_rl.run.runformat import RunFormat
    from discourse_rl.run.steps.ner import NerStageConfig, train_ner_stage

    backbone = save_tiny_bert(folder / "backbone", 16, 1, 128)
    corpus = load_corpus()
    corpus = corpus.subset(sorted(corpus.essays)[:6])
    ner = tiny_cfg(
        str(backbone), head_hidden=8, epochs=1.0, batch_size=16, encode_tokens=8192, bf16=False
    )
    run = folder / "run"
    train_ner_stage(corpus, NerStageConfig(1, ner, DecodeConfig(max_min_words=5)), run)
    layout = RunLayout(run)
    seg_cfg = SegmentConfig(max_segments=64)
    atomic_write_text(layout.segments_config, config_to_toml(seg_cfg))
    probs = load_word_probs(layout.oof)
    words = {k: corpus.essays[k].words for k in probs}
    n_features = make_segments(probs, seg_cfg, None, words)[0].features.shape[1]
    net = NetworkConfig(max_segments=64, d_model=16, n_heads=2, n_layers=1, dim_feedforward=16)
    for k, trainer in enumerate(("bc", "ppo")):
        cfg = AgentConfig(seed=k, network=net)
        save_policy(make_policy(cfg, n_features), layout.policy(trainer))
    per_type = {c: 0.1 * (i + 1) for i, c in enumerate(CLASSES)}
    rows = (("ner-naive", 0.2, ()), ("ner-tuned", 0.3, ()), ("bc", 0.25, (0,)), ("ppo", 0.1, (0,)))
    stages = tuple(
        StageScores.combine(name, [HeldOutScore(macro, per_type, macro, macro)], seeds, 3, 3)
        for name, macro, seeds in rows
    )
    AgentResults(3, 3, HeldOutEssays(0, 2, "ner", 0, 6), stages).write(layout.agent_results)
    RunFormat.current().write(layout.format)
    return run
