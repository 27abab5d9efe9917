"""Layer-wise attention-output matching (attnlab.distill.layer_match): teacher forcing, which
layers are matched, zero loss for an unchanged layer, and that training lowers the loss."""

import pytest
import torch

from attnlab.distill.layer_match import attention_match_loss, converted_layers
from attnlab.distill.student import init_from_teacher, transfer_config
from attnlab.model import ModelConfig, Transformer

SWA = {"swa": {"kind": "sliding_window", "window": 2}, "dense": {"kind": "dense"}}


def _pair(pattern):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, context=16, attn_impl="sdpa")
    teacher = Transformer(cfg).eval()
    student = Transformer(transfer_config(cfg, SWA, pattern))
    init_from_teacher(student, teacher, list(range(4)))
    return student, teacher


def test_converted_layers_are_the_ones_whose_spec_changed():
    student, teacher = _pair(["swa", "dense"])
    assert converted_layers(student, teacher) == [0, 2]
    assert converted_layers(teacher, teacher) == []


def test_unchanged_layer_matches_exactly_and_converted_one_does_not():
    student, teacher = _pair(["swa", "dense"])
    x = torch.randint(0, 64, (2, 16))
    out = attention_match_loss(student, teacher, x, [0, 1, 2, 3])
    assert float(out["layer_1"]) < 1e-10 and float(out["layer_3"]) < 1e-10  # dense in both
    assert float(out["layer_0"]) > 1e-3 and float(out["layer_2"]) > 1e-3   # window 2 vs dense at 16 tokens


def test_teacher_forced_inputs_and_gradients_only_on_student_attention():
    student, teacher = _pair(["swa"])
    x = torch.randint(0, 64, (2, 16))
    before = float(attention_match_loss(student, teacher, x, [3])["loss"].detach())
    with torch.no_grad():  # the student's own earlier layers do not feed the matched layer
        for p in student.layers[0].parameters():
            p.add_(1.0)
    out = attention_match_loss(student, teacher, x, [3])
    assert float(out["loss"].detach()) == pytest.approx(before, rel=1e-6)
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    grads = {n for n, p in student.named_parameters() if p.grad is not None}
    assert grads and all(n.startswith("layers.3.self_attn.") for n in grads)


def test_training_on_the_matching_loss_lowers_it():
    student, teacher = _pair(["swa"])
    layers = converted_layers(student, teacher)
    params = [p for i in layers for p in student.layers[i].self_attn.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    x = torch.randint(0, 64, (4, 16))
    first = float(attention_match_loss(student, teacher, x, layers)["loss"].detach())
    for _ in range(30):
        opt.zero_grad()
        attention_match_loss(student, teacher, x, layers)["loss"].backward()
        opt.step()
    assert float(attention_match_loss(student, teacher, x, layers)["loss"].detach()) < 0.7 * first


def test_bad_layers_are_named():
    student, teacher = _pair(["swa"])
    with pytest.raises(ValueError, match="at least one layer"):
        attention_match_loss(student, teacher, torch.zeros(1, 4, dtype=torch.long), [])
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        attention_match_loss(student, teacher, torch.zeros(1, 4, dtype=torch.long), [7])
