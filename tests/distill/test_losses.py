"""Distillation losses against torch.nn.functional.kl_div, hand-computed values and float64 gradcheck."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.distill.losses import (
    HiddenStateLoss,
    TopK,
    distillation_loss,
    forward_kl,
    generalized_jsd,
    hard_loss,
    hidden_state_loss,
    reverse_kl,
)

SHAPE = (3, 7, 11)  # B, N, V: awkward sizes


def logits(seed, shape=SHAPE, dtype=torch.float32, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("T", [1.0, 2.0, 0.5])
def test_forward_and_reverse_kl_match_torch_kl_div(T):
    s, t = logits(0), logits(1)
    log_s = F.log_softmax(s / T, -1).reshape(-1, SHAPE[-1])
    log_t = F.log_softmax(t / T, -1).reshape(-1, SHAPE[-1])
    fwd = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * T**2
    rev = F.kl_div(log_t, log_s, log_target=True, reduction="batchmean") * T**2
    torch.testing.assert_close(forward_kl(s, t, T), fwd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reverse_kl(s, t, T), rev, rtol=1e-5, atol=1e-6)


def test_hand_computed_two_token_values():
    p_t, p_s = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    s, t = p_s.log()[None], p_t.log()[None]
    kl_ts = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    kl_st = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    m = 0.5 * (p_t + p_s)
    jsd = 0.5 * float((p_t * (p_t / m).log()).sum()) + 0.5 * float((p_s * (p_s / m).log()).sum())
    assert forward_kl(s, t).item() == pytest.approx(kl_ts, rel=1e-6)
    assert reverse_kl(s, t).item() == pytest.approx(kl_st, rel=1e-6)
    assert generalized_jsd(s, t, beta=0.5).item() == pytest.approx(jsd, rel=1e-6)
    # temperature: logits / T then times T^2
    assert forward_kl(2 * s, 2 * t, temperature=2.0).item() == pytest.approx(4 * kl_ts, rel=1e-6)


def test_jsd_end_points_are_the_kl_forms_and_scaled_jsd_is_continuous():
    s, t = logits(2), logits(3)
    torch.testing.assert_close(generalized_jsd(s, t, beta=0.0, temperature=1.5), forward_kl(s, t, 1.5))
    torch.testing.assert_close(generalized_jsd(s, t, beta=1.0, temperature=1.5), reverse_kl(s, t, 1.5))
    # the mixture formula vanishes at the ends; divided by beta (1 - beta) it tends to the KL forms
    s64, t64 = logits(2, dtype=torch.float64), logits(3, dtype=torch.float64)
    near0 = generalized_jsd(s64, t64, beta=1e-5, scaled=True)
    near1 = generalized_jsd(s64, t64, beta=1 - 1e-5, scaled=True)
    torch.testing.assert_close(near0, forward_kl(s64, t64).double(), rtol=1e-3, atol=0)
    torch.testing.assert_close(near1, reverse_kl(s64, t64).double(), rtol=1e-3, atol=0)
    assert 0 < generalized_jsd(s, t, beta=0.5).item() <= math.log(2)


def test_identical_distributions_give_zero():
    s = logits(4)
    for loss in (forward_kl(s, s), reverse_kl(s, s), generalized_jsd(s, s, 0.3)):
        assert abs(loss.item()) < 1e-6


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd", "topk_forward", "topk_jsd"])
def test_gradcheck_float64(kind):
    s = logits(5, (2, 3, 6), torch.float64).requires_grad_(True)
    t = logits(6, (2, 3, 6), torch.float64).requires_grad_(True)
    fns = {
        "forward": lambda s, t: forward_kl(s, t, 2.0),
        "reverse": lambda s, t: reverse_kl(s, t, 2.0),
        "jsd": lambda s, t: generalized_jsd(s, t, 0.3, 1.5),
        "topk_forward": lambda s, t: forward_kl(s, TopK(t[..., :4], torch.tensor([0, 2, 3, 5]).expand(2, 3, 4)), 2.0),
        "topk_jsd": lambda s, t: generalized_jsd(s, TopK(t[..., :4], torch.tensor([5, 1, 3, 0]).expand(2, 3, 4)), 0.7),
    }
    assert torch.autograd.gradcheck(fns[kind], (s, t), eps=1e-6, atol=1e-5)


def test_gradcheck_hidden_losses_with_projection():
    torch.manual_seed(0)
    hs = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    ht = torch.randn(2, 3, 8, dtype=torch.float64)
    for kind in ("mse", "cosine"):
        module = HiddenStateLoss([(0, 1)], 5, 8, kind).double()
        w = module.proj[0].weight
        assert torch.autograd.gradcheck(lambda hs, w, kind=kind: hidden_state_loss(hs @ w.T, ht, kind), (hs, w))
        assert module({0: hs}, {1: ht}).requires_grad


@pytest.mark.parametrize("loss", ["forward", "reverse", "jsd"])
def test_topk_with_k_equal_vocab_equals_the_full_loss(loss):
    s, t = logits(7), logits(8)
    top = TopK.of(t, SHAPE[-1])
    fn = {"forward": forward_kl, "reverse": reverse_kl, "jsd": lambda a, b, T: generalized_jsd(a, b, 0.4, T)}[loss]
    torch.testing.assert_close(fn(s, top, 2.0), fn(s, t, 2.0), rtol=1e-5, atol=1e-6)


def test_topk_renormalizes_the_teacher_by_hand():
    s = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    t = torch.tensor([[5.0, 4.0, -1.0, -2.0]])
    top = TopK.of(t, 2)  # ids 0, 1; p_t^k = softmax([5, 4])
    p = torch.softmax(torch.tensor([5.0, 4.0]), -1)
    log_s = torch.log_softmax(s, -1)[0, :2]  # forward KL: the student's full-vocab log-probs
    expected = float((p * (p.log() - log_s)).sum())
    assert forward_kl(s, top).item() == pytest.approx(expected, rel=1e-6)
    log_s_k = torch.log_softmax(s[0, :2], -1)  # reverse KL: the student restricted to the k ids
    q = log_s_k.exp()
    assert reverse_kl(s, top).item() == pytest.approx(float((q * (log_s_k - p.log())).sum()), rel=1e-6)


def test_distillation_loss_mixes_hard_and_soft_and_masks_ignored_targets():
    s, t = logits(9), logits(10)
    y = torch.randint(0, SHAPE[-1], SHAPE[:2], generator=torch.Generator().manual_seed(0))
    out = distillation_loss(s, t, y, kind="forward_kl", temperature=2.0, weight_hard=0.3, weight_soft=0.7)
    ce = F.cross_entropy(s.reshape(-1, SHAPE[-1]), y.reshape(-1))
    torch.testing.assert_close(out["hard"], ce)
    torch.testing.assert_close(out["soft"], forward_kl(s, t, 2.0))
    torch.testing.assert_close(out["loss"], 0.3 * ce + 0.7 * forward_kl(s, t, 2.0))
    y2 = y.clone()
    y2[:, :3] = -100
    masked = distillation_loss(s, t, y2, kind="reverse_kl")
    torch.testing.assert_close(masked["soft"], reverse_kl(s[:, 3:], t[:, 3:]))
    torch.testing.assert_close(masked["hard"], hard_loss(s[:, 3:], y[:, 3:]))


def test_hidden_state_loss_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert hidden_state_loss(a, b, "mse").item() == pytest.approx(((1 + 1) / 2 + (0 + 1) / 2) / 2)
    assert hidden_state_loss(a, b, "cosine").item() == pytest.approx(((1 - 0) + (1 - 1)) / 2)
    same = HiddenStateLoss([(0, 0), (1, 2)], 4, 4)
    assert sum(p.numel() for p in same.parameters()) == 0  # equal widths: no projection
    wide = HiddenStateLoss([(0, 0), (1, 2)], 4, 6)
    assert [tuple(p.shape) for p in wide.parameters()] == [(6, 4), (6, 4)]


def test_bad_arguments_say_what_is_allowed():
    s, t = logits(11), logits(12)
    with pytest.raises(ValueError, match="temperature"):
        forward_kl(s, t, 0.0)
    with pytest.raises(ValueError, match=r"beta=1.5 must be a number in \[0, 1\]"):
        generalized_jsd(s, t, 1.5)
    with pytest.raises(ValueError, match="do not match"):
        forward_kl(s, t[..., :5])
    with pytest.raises(ValueError, match="top_k"):
        TopK.of(t, SHAPE[-1] + 1)
    with pytest.raises(ValueError, match="distill.loss='kl'"):
        distillation_loss(s, t, kind="kl")
