"""The episode-level trainer: masked sampling, the loss's gradient and KL, rewards, learning."""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from discourse_rl.core import metric
from discourse_rl.core.common import DiscourseRLError, config_from_dict
from discourse_rl.core.data import Corpus, load_corpus
from discourse_rl.decoders.agent import FineTuneInputs, predict_spans, train_bc
from discourse_rl.decoders.agent.common import labelling_masks, masks_after, sample_labellings
from discourse_rl.decoders.agent.episode import EpisodeConfig, train_episode
from discourse_rl.decoders.agent.episode_loss import episode_loss
from discourse_rl.decoders.agent.policy import (
    PrevLabelHead,
    load_policy,
    masked_greedy,
    save_policy,
    segment_logits,
)
from discourse_rl.decoders.agent.reward import MacroReward, gold_table, labelling_counts, rewards
from discourse_rl.decoders.segments import (
    N_ACTIONS,
    EssaySegments,
    SegmentConfig,
    action_masks,
    allowed_actions,
    gold_frame,
    make_segments,
    segment_gold_actions,
    simulate_word_probs,
    spans_frame,
)
from tests.test_agent import TINY as AGENT_TINY
from tests.tiny import agent_with

# The agent tests' tiny policy, cloned a little longer and from every essay.
TINY = agent_with(AGENT_TINY, bc={"epochs": 30}, val_fraction=0.0)
CLAIM, EVIDENCE = 2, 5


@cache
def task() -> tuple[Corpus, list[EssaySegments]]:
    corpus = load_corpus()
    ids = sorted(corpus.essays)[:40]
    probs = simulate_word_probs(corpus, 0.3, seed=1, ids=ids)
    segs = segment_gold_actions(make_segments(probs, SegmentConfig(max_segments=64), ids), corpus)
    return corpus, segs


def corrupt(segs: list[EssaySegments]) -> list[EssaySegments]:
    """Demonstrations that call every Claim 'Evidence' in every other essay: a cloned policy
    hesitates between the two, while the reward knows better."""
    out = []
    for k, s in enumerate(segs):
        g = s.gold_action
        assert g is not None
        if k % 2:
            cls = (g - 1) // 2
            g = np.where((g > 0) & (cls == CLAIM), g + 2 * (EVIDENCE - CLAIM), g)
        out.append(s.with_gold(g))
    return out


@cache
def bc_policy(root: Path) -> Path:
    return train_bc(corrupt(task()[1]), TINY, root / "bc").path


def greedy_f1(path: Path, segs: list[EssaySegments], corpus: Corpus) -> float:
    gt = gold_frame(corpus, [s.essay_id for s in segs])
    return metric.score(predict_spans(path, segs), gt).macro_f1


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("episode")


# ---------------------------------------------------------------------------------------------
# Sampling under the action mask


def test_masks_match_the_environment() -> None:
    prev = torch.arange(-1, N_ACTIONS)
    expect = np.stack([allowed_actions(int(p)) for p in prev])
    assert np.array_equal(masks_after(prev).numpy(), expect)
    acts = torch.tensor([[1, 2, 2, 0, 4, 3, 6]])
    assert np.array_equal(labelling_masks(acts)[0].numpy(), action_masks(acts[0].numpy()))


def test_samples_are_allowed_seeded_and_zero_on_padding() -> None:
    logits = torch.randn(3, 9, N_ACTIONS) * 3
    logits[..., 2::2] += 4  # push towards 'continues', the actions the mask restricts
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 5:] = False
    a = sample_labellings(logits, mask, 50, torch.Generator().manual_seed(3))
    b = sample_labellings(logits, mask, 50, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, sample_labellings(logits, mask, 50, torch.Generator().manual_seed(4)))
    for i, n in enumerate(mask.sum(1).tolist()):
        for k in range(50):
            act = a[i, k, :n].numpy()
            assert action_masks(act)[np.arange(n), act].all()
    assert (a[1, :, 5:] == 0).all()
    assert (a[..., 1:] % 2 == 0).any() and (a > 0).any()


def test_greedy_matches_the_agents_masked_greedy() -> None:
    logits = torch.randn(4, 12, N_ACTIONS) * 2
    logits[..., 2::2] += 1
    g = sample_labellings(logits, torch.ones(4, 12, dtype=torch.bool), 1, None)[:, 0]
    for i in range(4):
        assert np.array_equal(g[i].numpy(), masked_greedy(logits[i].numpy()))


def test_samples_follow_the_masked_distribution() -> None:
    logits = torch.randn(1, 2, N_ACTIONS)
    a = sample_labellings(logits, torch.ones(1, 2, dtype=torch.bool), 20000, torch.Generator())
    first = torch.bincount(a[0, :, 0], minlength=N_ACTIONS).double() / 20000
    expect = torch.softmax(logits[0, 0].masked_fill(~masks_after(torch.tensor(-1)), -1e9), -1)
    assert first[2::2].sum() == 0
    assert torch.allclose(first, expect.double(), atol=0.015)


# ---------------------------------------------------------------------------------------------
# The loss


def _loss_inputs(k: int = 3) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 6, N_ACTIONS, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    act = sample_labellings(logits.detach()[:, 0], mask, k, torch.Generator().manual_seed(0))
    adv = torch.randn(2, k, requires_grad=True)
    return logits, mask, act, labelling_masks(act), adv


def test_gradient_flows_only_through_the_sampled_actions_log_probs() -> None:
    logits, mask, act, amask, adv = _loss_inputs()
    parts = episode_loss(logits, logits.detach(), act, amask, mask, adv, kl_beta=0.0)
    parts.loss.backward()  # type: ignore[no-untyped-call]
    assert adv.grad is None  # the reward is a constant to the loss
    assert logits.grad is not None
    grad = logits.grad[:, 0]
    # d/dlogits of -mean_k(adv_k * sum_s log p(a_ks)) = -sum_k adv_k (onehot(a_ks) - p_ks) / (B K)
    expect = torch.zeros_like(grad)
    for i in range(2):
        for k in range(3):
            for s in range(int(mask[i].sum())):
                lg = logits.detach()[i, 0, s].masked_fill(~amask[i, k, s], -1e9)
                onehot = torch.nn.functional.one_hot(act[i, k, s], N_ACTIONS).float()
                expect[i, s] -= adv.detach()[i, k] * (onehot - torch.softmax(lg, -1)) / 6
    assert torch.allclose(grad, expect, atol=1e-6)
    assert (grad[0, 4:] == 0).all()  # padding
    never_allowed = ~amask.any(1)  # actions no labelling could take at that segment
    assert (grad[never_allowed] == 0).all() and never_allowed.any()


def test_kl_is_zero_at_the_bc_policy_and_positive_away_from_it() -> None:
    logits, mask, act, amask, adv = _loss_inputs()
    same = episode_loss(logits, logits.detach(), act, amask, mask, adv, kl_beta=1.0)
    assert abs(float(same.kl.detach())) < 1e-6
    moved = episode_loss(
        logits, logits.detach() + torch.randn_like(logits), act, amask, mask, adv, kl_beta=1.0
    )
    assert float(moved.kl.detach()) > 0.01
    # Gradient of the KL term vanishes at the reference (it is a minimum).
    logits.grad = None
    kl_only = episode_loss(logits, logits.detach(), act, amask, mask, adv * 0, kl_beta=1.0)
    kl_only.loss.backward()  # type: ignore[no-untyped-call]
    assert logits.grad is not None and logits.grad.abs().max() < 1e-6


def test_ppo_surrogate_clips_the_labelling_ratio() -> None:
    logits, mask, act, amask, _ = _loss_inputs(k=1)
    adv = torch.ones(2, 1)
    parts = episode_loss(logits, logits.detach(), act, amask, mask, adv, kl_beta=0.0)
    old = parts.logp.detach() - 1.0  # the new policy is e times likelier: clipped at 1.2
    clipped = episode_loss(
        logits, logits.detach(), act, amask, mask, adv, kl_beta=0.0, clip_range=0.2, old_logp=old
    )
    assert float(clipped.loss.detach()) == pytest.approx(-1.2)
    logits.grad = None
    clipped.loss.backward()  # type: ignore[no-untyped-call]
    assert logits.grad is not None and (logits.grad == 0).all()


# ---------------------------------------------------------------------------------------------
# Rewards


def test_rewards_come_from_the_metric() -> None:
    corpus, segs = task()
    gold = gold_table(corpus, [s.essay_id for s in segs[:3]])
    acts = np.zeros((3, 2, max(s.n_segments for s in segs[:3])), np.int64)
    for i, s in enumerate(segs[:3]):
        assert s.gold_action is not None
        acts[i, 0, : s.n_segments] = s.gold_action
    counts = labelling_counts(segs[:3], acts, gold)
    f1 = rewards(counts, "f1")
    # The gold labelling's reward is each essay's F-score as the metric computes it from spans.
    labelled = spans_frame(segs[:3], [acts[i, 0, : s.n_segments] for i, s in enumerate(segs[:3])])
    ids = [s.essay_id for s in segs[:3]]
    by_metric = metric.per_essay_scores(labelled, gold_frame(corpus, ids)).set_index("id")
    assert f1[:, 0].tolist() == pytest.approx(by_metric.loc[ids, "f1"].tolist(), abs=1e-12)
    assert (f1[:, 1] == 0).all()
    spans = spans_frame([segs[0]], [acts[0, 0, : segs[0].n_segments]])
    one = metric.score(spans, gold_frame(corpus, [segs[0].essay_id]))
    assert counts[0, 0, :, 0].sum() == sum(c.tp for c in one.per_class.values())
    jac = rewards(counts, "jaccard")
    assert np.allclose(jac[:, 0], [metric.essay_jaccard(c) for c in counts[:, 0]])
    with pytest.raises(ValueError, match="macro"):
        rewards(counts, "macro")  # needs its class statistics


def test_macro_reward_is_the_first_order_change_of_macro_f1() -> None:
    rng = np.random.default_rng(0)
    corpus_counts = rng.integers(0, 6, (2000, 7, 3))
    corpus_counts[:, 3] //= 3  # a rare class
    reward = MacroReward(corpus_counts, momentum=1.0)
    totals = corpus_counts.sum(0)

    def macro(t: np.ndarray) -> float:
        return float(np.mean(2 * t[:, 0] / (2 * t[:, 0] + t[:, 1] + t[:, 2])))

    for _ in range(5):
        essay = rng.integers(0, 4, (7, 3))
        exact = (macro(totals + essay) - macro(totals)) * len(corpus_counts)
        assert reward(essay) == pytest.approx(exact, rel=0.02, abs=1e-3)
    hit = np.zeros((2, 7, 3), np.int64)
    hit[0, 3, 0] = 1  # a true positive of the rare class ...
    hit[1, 5, 0] = 1  # ... is worth more than one of a common class
    r = reward(hit)
    assert r[0] > r[1] > 0


# ---------------------------------------------------------------------------------------------
# Training


def test_config_from_toml_mapping() -> None:
    cfg = config_from_dict(EpisodeConfig, {"estimator": "self_critical", "lr": 1})
    assert cfg.estimator == "self_critical" and cfg.lr == 1.0
    with pytest.raises(DiscourseRLError, match="unknown key"):
        config_from_dict(EpisodeConfig, {"estimatr": "rloo"})


def test_trainer_beats_bc_and_is_deterministic(root: Path) -> None:
    corpus, segs = task()
    bc = bc_policy(root)
    cfg = EpisodeConfig(
        passes=6, batch_essays=8, samples=4, lr=3e-3, kl_beta=0.0, progress_bar=False
    )
    path = train_episode(
        FineTuneInputs(segs, corpus, bc, root / "rloo", tb_dir=root / "tb"), cfg
    ).path
    before, after = greedy_f1(bc, segs, corpus), greedy_f1(path, segs, corpus)
    assert after > before + 0.03, (before, after)
    hist = json.loads((root / "rloo" / "history.json").read_text())
    assert hist["essays"] == 6 * len(segs) and hist["essays_per_second"] > 0
    assert any((root / "tb").iterdir())
    short = dataclasses.replace(cfg, passes=1)
    once, again = (
        train_episode(FineTuneInputs(segs, corpus, bc, root / f"det{k}"), short).path
        for k in range(2)
    )
    for (n, x), (_, y) in zip(
        load_policy(once).state_dict().items(), load_policy(again).state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), n
    assert not torch.equal(
        load_policy(once).state_dict()["action_net.weight"],
        load_policy(bc).state_dict()["action_net.weight"],
    )


@pytest.mark.parametrize("estimator", ["self_critical", "ppo"])
def test_other_estimators_learn(root: Path, estimator: str) -> None:
    corpus, segs = task()
    bc = bc_policy(root)
    cfg = EpisodeConfig(
        estimator=estimator,
        reward="f1",
        passes=5,
        batch_essays=8,
        samples=4,
        lr=3e-3 if estimator != "ppo" else 1e-3,
        ppo_epochs=2,
        kl_beta=0.0,
        progress_bar=False,
    )
    path = train_episode(FineTuneInputs(segs, corpus, bc, root / estimator), cfg).path
    assert greedy_f1(path, segs, corpus) > greedy_f1(bc, segs, corpus) + 0.02


def test_kl_penalty_holds_the_policy_at_bc(root: Path) -> None:
    corpus, segs = task()
    bc = bc_policy(root)
    cfg = EpisodeConfig(passes=3, batch_essays=8, samples=4, lr=3e-3, progress_bar=False)
    free = train_episode(
        FineTuneInputs(segs, corpus, bc, root / "free"), dataclasses.replace(cfg, kl_beta=0.0)
    ).path
    held = train_episode(
        FineTuneInputs(segs, corpus, bc, root / "held"), dataclasses.replace(cfg, kl_beta=5.0)
    ).path

    def kl_to_bc(path: Path) -> float:
        p, q = segment_logits(load_policy(path), segs), segment_logits(load_policy(bc), segs)
        lp = [torch.log_softmax(torch.from_numpy(x), -1) for x in p]
        lq = [torch.log_softmax(torch.from_numpy(x), -1) for x in q]
        return float(sum((a.exp() * (a - b)).sum() for a, b in zip(lp, lq, strict=True)))

    assert kl_to_bc(held) < 0.5 * kl_to_bc(free)


def test_autoregressive_head_adds_nothing_at_first() -> None:
    head = PrevLabelHead(TINY.network.d_model, 64)
    h = torch.randn(4, 9, TINY.network.d_model)
    act = torch.randint(0, N_ACTIONS, (4, 2, 9))
    assert (head.teacher_forced(h, act) == 0).all()


def direct_autoregressive_decode(path: Path, segs: list[EssaySegments]) -> list[np.ndarray]:
    """Greedy decoding one essay and one segment at a time, the head fed each label chosen."""
    policy = load_policy(path)
    assert policy.head is not None
    out = []
    with torch.no_grad():
        for s in segs:
            f = torch.from_numpy(s.features)[None]
            h = policy.encoder(f, torch.ones(1, s.n_segments, dtype=torch.bool))[0]
            logits = policy.action_net(h)
            prev, acts = -1, []
            for t in range(s.n_segments):
                row = logits[t] + policy.head(h[t], torch.tensor(prev))
                prev = int(np.argmax(np.where(allowed_actions(prev), row.numpy(), -np.inf)))
                acts.append(prev)
            out.append(np.array(acts))
    return out


def test_autoregressive_policy_is_saved_as_policy_pt_and_predicted_with_its_head(
    root: Path,
) -> None:
    corpus, segs = task()
    bc = bc_policy(root)
    cfg = EpisodeConfig(
        autoregressive=True, passes=2, batch_essays=8, samples=4, lr=3e-3, progress_bar=False
    )
    path = train_episode(FineTuneInputs(segs, corpus, bc, root / "ar", segs[:8]), cfg).path
    assert path == root / "ar" / "policy.pt"  # where `predict --stage episode` looks
    policy = load_policy(path)
    assert policy.config.kind == "autoregressive" and policy.head is not None
    assert any(p.abs().sum() > 0 for p in policy.head.mlp[-1].parameters())  # it trained
    test = segs[:12]
    # predict_spans is what the agent stage scores with and what `predict` calls.
    table = predict_spans(path, test)
    expected = spans_frame(test, direct_autoregressive_decode(path, test))
    assert table.reset_index(drop=True).equals(expected.reset_index(drop=True))
    # The head really is used: one that favours 'none' everywhere leaves nothing to predict.
    with torch.no_grad():
        policy.head.mlp[-1].bias[0] += 1e4
    save_policy(policy, root / "ar_none.pt")
    assert len(table) > 0 and predict_spans(root / "ar_none.pt", test).empty
    with pytest.raises(DiscourseRLError, match="not found"):
        predict_spans(root / "ar" / "policy_ar.pt", test)
