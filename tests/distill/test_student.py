"""Layer maps, initialization from a teacher, attention transfer, hidden-state capture."""

import pytest
import torch

from attnlab.distill.student import capture_hidden, init_from_teacher, layer_map, transfer_config
from attnlab.model import ModelConfig, Transformer


def cfg(**kw):
    base = dict(vocab_size=40, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, context=24)
    return ModelConfig(**(base | kw))


def test_named_layer_maps():
    assert layer_map("every_other", 6, 12) == [0, 2, 4, 6, 8, 10]  # DistilBERT
    assert layer_map("uniform", 3, 7) == [0, 3, 6]
    assert layer_map("top", 3, 12) == [3, 7, 11]
    assert layer_map("identity", 4, 4) == [0, 1, 2, 3]
    assert layer_map([3, 0], 2, 4) == [3, 0]
    with pytest.raises(ValueError, match="needs more teacher layers"):
        layer_map("every_other", 3, 4)
    with pytest.raises(ValueError, match="must list 2 teacher layer ids"):
        layer_map([0, 4], 2, 4)
    with pytest.raises(ValueError, match="unknown"):
        layer_map("odd", 2, 4)


def test_layer_map_init_copies_the_right_tensors():
    teacher, student = Transformer(cfg(n_layers=4)), Transformer(cfg(n_layers=2))
    copied = init_from_teacher(student, teacher, layer_map("every_other", 2, 4))
    t_state, s_state = teacher.state_dict(), student.state_dict()
    assert copied["layers.1.self_attn.q_proj.weight"] == "layers.2.self_attn.q_proj.weight"
    assert set(copied) == set(s_state)  # every student tensor came from the teacher
    for s_name, t_name in copied.items():
        assert torch.equal(s_state[s_name], t_state[t_name]), s_name
    # and not from a neighbouring layer
    assert not torch.equal(s_state["layers.1.mlp.up_proj.weight"], t_state["layers.1.mlp.up_proj.weight"])


def test_init_needs_matching_widths():
    with pytest.raises(ValueError, match=r"embed_tokens.weight \(40, 16\).*\(40, 32\)"):
        init_from_teacher(Transformer(cfg(d_model=16, n_layers=2)), Transformer(cfg()), [0, 2])


def test_attention_transfer_keeps_weights_and_swaps_the_spec():
    teacher = Transformer(cfg()).eval()
    wide = transfer_config(teacher.config, {"swa": {"kind": "sliding_window", "window": 24}}, ["swa"])
    narrow = transfer_config(teacher.config, {"swa": {"kind": "sliding_window", "window": 4}}, ["swa"])
    assert wide.d_model == teacher.config.d_model and wide.layer_names() == ["swa"] * 4
    idx = torch.randint(0, 40, (2, 20))
    outs = []
    for c in (wide, narrow):
        student = Transformer(c).eval()
        init_from_teacher(student, teacher, list(range(4)))
        outs.append(student(idx)[0])
    with torch.no_grad():
        ref = teacher(idx)[0]
    torch.testing.assert_close(outs[0], ref)  # a window as long as the sequence is dense
    assert not torch.allclose(outs[1][:, 10:], ref[:, 10:])  # a narrow window changes later positions
    torch.testing.assert_close(outs[1][:, :4], ref[:, :4])  # but not the first `window` ones


def test_capture_hidden_returns_block_outputs():
    model = Transformer(cfg()).eval()
    idx = torch.randint(0, 40, (2, 10))
    with torch.no_grad(), capture_hidden(model, [1, 3]) as hidden:
        logits, _ = model(idx)
        assert sorted(hidden) == [1, 3]
        torch.testing.assert_close(model.lm_head(model.norm(hidden[3])), logits)
    assert not model.layers[3]._forward_hooks  # hooks removed
