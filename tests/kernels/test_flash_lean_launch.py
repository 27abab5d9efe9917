"""The lean launch path of the autotuned dense / window kernels (common.lean_launch), on CPU.

Under the interpreter the launchers use fixed tiles, so these tests make the launchers take
their autotuned branch there: ``interpreting()`` reads False in forward.py / backward.py, the
autotuners time with a constant fake timer (the first pruned config wins) and keep no disk cache.
fp32 inputs, because that branch does not upcast 16-bit tiles for the interpreter.
"""

import torch
from attnlab.kernels.flash import (
    backward,
    common,
    flash_attention,
    flash_attention_reference,
    forward,
)
from kernel_testing import DEVICE, KERNEL_MARKS

pytestmark = KERNEL_MARKS

TUNED = (forward._fwd_kernel_autotuned, backward._dkdv_autotuned, backward._dq_autotuned)


def _autotuned_in_interpreter(monkeypatch) -> dict:
    """Route the launchers through autotuning in the interpreter; returns Autotuner.run call counts."""
    for module in (forward, backward):
        monkeypatch.setattr(module, "interpreting", lambda: False)
    runs = {}
    for tuned in TUNED:
        monkeypatch.setattr(tuned, "do_bench", lambda fn, quantiles: [1.0, 1.0, 1.0])
        monkeypatch.setattr(tuned, "cache_results", False)
        monkeypatch.setattr(tuned, "cache", {})
        name = tuned.base_fn.__name__

        def counted(*args, _run=tuned.run, _name=name, **kwargs):
            runs[_name] = runs.get(_name, 0) + 1
            return _run(*args, **kwargs)

        monkeypatch.setattr(tuned, "run", counted)
    monkeypatch.setattr(common, "_LEAN", {})
    return runs


def _inputs(seed, b=1, hq=4, hkv=2, n=70, d=40, same_kv=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, n, d, generator=gen).to(DEVICE).requires_grad_()
    k = torch.randn(b, hkv, n, d, generator=gen).to(DEVICE).requires_grad_()
    v = k if same_kv else torch.randn(b, hkv, n, d, generator=gen).to(DEVICE).requires_grad_()
    do = torch.randn(b, hq, n, d, generator=gen).to(DEVICE)
    return q, k, v, do


def _run(q, k, v, do, **kw):
    out, lse = flash_attention(q, k, v, return_lse=True, **kw)
    grads = torch.autograd.grad(out, (q, k, v) if v is not k else (q, k), do)
    return [out, lse, *grads]


def _reference(q, k, v, do, **kw):
    qq, kk = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    vv = kk if v is k else v.detach().double().requires_grad_()
    out, lse = flash_attention_reference(qq, kk, vv, return_lse=True, **kw)
    grads = torch.autograd.grad(out, (qq, kk, vv) if v is not k else (qq, kk), do.double())
    return [out, lse, *grads]


def test_lean_path_skips_the_autotuner_after_the_first_call_and_matches(monkeypatch):
    runs = _autotuned_in_interpreter(monkeypatch)
    kw = dict(causal=True, window_left=30, sink=4, softcap=20.0)
    for seed in range(3):  # new tensors every call: the cached argument list must take them
        q, k, v, do = _inputs(seed)
        got = _run(q, k, v, do, **kw)
        want = _reference(q, k, v, do, **kw)
        for g, w in zip(got, want, strict=True):
            finite = torch.isfinite(w)
            assert torch.equal(torch.isfinite(g), finite)
            torch.testing.assert_close(g[finite].double(), w[finite], atol=2e-4, rtol=2e-4)
    # one Autotuner.run per kernel (the first call), the later calls launched the kernel directly
    assert runs == {"_fwd_kernel": 1, "_bwd_dkdv_kernel": 1, "_bwd_dq_kernel": 1}
    assert len(common._LEAN) == 3
    for template, _, _, _ in common._LEAN.values():  # no tensor of a past call is kept alive
        assert not any(isinstance(x, torch.Tensor) for x in template)


def test_lean_path_equals_the_autotuner_path_bitwise(monkeypatch):
    _autotuned_in_interpreter(monkeypatch)
    q, k, v, do = _inputs(7, n=50, d=32)
    kw = dict(causal=False, window_left=20, window_right=5)
    monkeypatch.setattr(common, "LEAN_LAUNCH", False)
    plain = _run(q, k, v, do, **kw)
    assert not common._LEAN
    monkeypatch.setattr(common, "LEAN_LAUNCH", True)
    _run(q, k, v, do, **kw)  # first call of the key: through the autotuner, recorded
    lean = _run(q, k, v, do, **kw)  # from the record
    for a, b in zip(plain, lean, strict=True):
        assert torch.equal(a, b)


def test_lean_path_keys_on_layout_and_aliasing(monkeypatch):
    """A new stride pattern (BSHD view) or k is v makes a new key, not a stale argument list."""
    runs = _autotuned_in_interpreter(monkeypatch)
    q, k, v, do = _inputs(3, n=40, d=16)
    _run(q, k, v, do, causal=True)
    qt = q.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()  # [B, H, N, D] view of BSHD
    got = _run(qt, k, v, do, causal=True)
    want = _reference(qt, k, v, do, causal=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, atol=2e-4, rtol=2e-4)
    assert runs["_fwd_kernel"] == 2
    q, k, v, do = _inputs(4, n=40, d=16, same_kv=True)
    got = _run(q, k, v, do, causal=True)
    want = _reference(q, k, v, do, causal=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, atol=2e-4, rtol=2e-4)
