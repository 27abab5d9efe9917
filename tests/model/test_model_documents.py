"""Packed documents in the model: ``Transformer(idx, doc_ids=...)`` keeps every layer's attention
inside each document, for every attention kind, causal and masked-LM."""

import pytest
import torch

from attnlab.model import Transformer

KINDS = {
    "dense": ({"d": {"kind": "dense"}}, ["d"]),
    "hybrid": ({"w": {"kind": "sliding_window", "window": 8}, "d": {"kind": "dense"}}, ["w", "d"]),
    "bigbird": (
        {"b": {"kind": "block_sparse", "pattern": "bigbird", "block_size": 8, "local_blocks": 1,
               "global_blocks": 1, "random_blocks": 1}},
        ["b"],
    ),
}
# Two batch rows with different boundaries: documents [0, 13), [13, 14), [14, 40) and [0, 30), [30, 40).
DOC_IDS = torch.tensor([[0] * 13 + [1] + [2] * 26, [5] * 30 + [6] * 10])


@pytest.mark.parametrize("objective", ["causal", "mlm"])
@pytest.mark.parametrize("kind", KINDS)
def test_logits_ignore_other_documents(make_cfg, kind, objective):
    attention, pattern = KINDS[kind]
    model = Transformer(make_cfg(attention=attention, layer_pattern=pattern, objective=objective)).eval()
    idx = torch.randint(0, 64, (2, 40))
    changed = idx.clone()
    changed[0, :13] = (idx[0, :13] + 1) % 64  # row 0: the first document only
    changed[1, 30:] = (idx[1, 30:] + 7) % 64  # row 1: the last document only
    with torch.no_grad():
        a, _ = model(idx, doc_ids=DOC_IDS)
        b, _ = model(changed, doc_ids=DOC_IDS)
        c, _ = model(changed)  # without documents the change leaks everywhere (mlm) / forward (causal)
    torch.testing.assert_close(a[0, 13:], b[0, 13:], rtol=0, atol=1e-6)
    torch.testing.assert_close(a[1, :30], b[1, :30], rtol=0, atol=1e-6)
    assert (a[0, :13] - b[0, :13]).abs().max() > 1e-3  # the changed document does change
    assert (a[0, 13:] - c[0, 13:]).abs().max() > 1e-4


def test_packed_row_equals_documents_run_alone(make_cfg):
    """RoPE is relative, so a document packed at an offset gets the logits it gets alone."""
    model = Transformer(make_cfg(attention=KINDS["hybrid"][0], layer_pattern=KINDS["hybrid"][1])).eval()
    idx = torch.randint(0, 64, (1, 40))
    with torch.no_grad():
        packed, _ = model(idx, doc_ids=torch.tensor([[0] * 17 + [1] * 23]))
        first, _ = model(idx[:, :17])
        second, _ = model(idx[:, 17:])
    torch.testing.assert_close(packed[:, :17], first, rtol=0, atol=1e-6)
    torch.testing.assert_close(packed[:, 17:], second, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
def test_impls_agree_and_train_with_documents(make_cfg, impl):
    torch.manual_seed(3)
    model = Transformer(make_cfg(attn_impl=impl, attention=KINDS["hybrid"][0], layer_pattern=KINDS["hybrid"][1]))
    idx = torch.randint(0, 64, (2, 40))
    logits, loss = model(idx, idx, doc_ids=DOC_IDS.to(torch.int32))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    torch.manual_seed(3)
    ref = Transformer(make_cfg(attn_impl="reference", attention=KINDS["hybrid"][0], layer_pattern=KINDS["hybrid"][1]))
    torch.testing.assert_close(logits, ref(idx, doc_ids=DOC_IDS)[0], rtol=1e-5, atol=1e-5)


def test_bad_doc_ids(make_cfg):
    model = Transformer(make_cfg())
    idx = torch.randint(0, 64, (2, 10))
    with pytest.raises(ValueError, match=r"doc_ids must be an int tensor shaped like idx \(2, 10\), got \(10,\)"):
        model(idx, doc_ids=torch.zeros(10, dtype=torch.int64))
    with pytest.raises(ValueError, match="non-decreasing"):
        model(idx, doc_ids=torch.tensor([[1] * 5 + [0] * 5] * 2))
