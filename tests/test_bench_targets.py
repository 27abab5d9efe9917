"""`attnlab.bench.targets`: the issue targets checked from results.csv files (synthetic rows)."""

from __future__ import annotations

import csv

import pytest

from attnlab.bench import targets

COLUMNS = ["impl", "spec", "n", "head_dim", "dtype", "mode", "status", "ms", "tflops", "peak_mib", "flops",
           "spec_repr", "reason"]
CAUSAL = "AttentionSpec(kind='dense', causal=True)"
SWA = "AttentionSpec(kind='sliding_window', causal=True, window=1024)"
SPARSE = "AttentionSpec(kind='block_sparse', causal=True, block_size=128, pattern='random', density=0.25, seed=0)"
DOCS = CAUSAL + " + 8 documents"


def _row(impl, name, spec_repr, ms, flops, n=16384, mode="fwd_bwd", peak=100.0, status="ok"):
    return {"impl": impl, "spec": name, "n": n, "head_dim": 128, "dtype": "bfloat16", "mode": mode,
            "status": status, "ms": ms, "tflops": flops / (ms * 1e9), "peak_mib": peak, "flops": flops,
            "spec_repr": spec_repr, "reason": ""}


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path


def _by_target(checks):
    return {c.target: c for c in checks}


def test_checks_ratios_ideal_and_memory(tmp_path):
    f = _write(tmp_path / "a" / "results.csv", [
        _row("triton", "causal", CAUSAL, 10.0, 1000e9, peak=100.0),
        _row("flex", "causal", CAUSAL, 11.0, 1000e9),
        _row("sdpa_flash", "causal", CAUSAL, 12.0, 1000e9, peak=200.0),
        _row("triton", "swa1024", SWA, 2.0, 125e9),  # ideal 8x, got 5x: 62.5% of ideal
        _row("flex", "swa1024", SWA, 2.6, 125e9),  # 1.3x flex
        _row("triton", "random25", SPARSE, 3.0, 250e9),  # ideal 4x, got 3.33x: 83%
        _row("flex", "random25", SPARSE, 2.7, 250e9),  # 0.9x flex
        _row("triton", "docs8", DOCS, 1.0, 125e9),
        _row("flex", "docs8", DOCS, 5.0, 125e9),
        _row("sdpa_cudnn", "causal", CAUSAL, 5.0, 1000e9, status="skipped"),  # skipped rows are not used
    ])
    checks = targets.checks_of(targets.read_rows(f), "a")
    got = _by_target(checks)
    assert got["dense >= 1.0x flex"].value == pytest.approx(1.1) and got["dense >= 1.0x flex"].met
    assert got["dense >= 1.3x sdpa_flash"].value == pytest.approx(1.2) and not got["dense >= 1.3x sdpa_flash"].met
    assert "dense stretch >= 0.85x sdpa_cudnn" not in got
    mem = got["memory fwd+bwd <= 1.1x sdpa_flash"]
    assert mem.value == pytest.approx(0.5) and mem.met
    ideal = got["sliding window: speedup >= 80% of ideal"]
    assert ideal.value == pytest.approx(0.625) and not ideal.met
    assert got["sliding window >= 1.2x flex"].value == pytest.approx(1.3)
    assert got["block-sparse: speedup >= 80% of ideal"].value == pytest.approx(10 / 3 / 4)
    assert not got["block-sparse >= 1.0x flex"].met
    assert got["documents >= 1.0x flex"].value == pytest.approx(5.0)
    assert len(checks) == 8


def test_ratios_never_mix_runs_or_shapes(tmp_path):
    a = _write(tmp_path / "a" / "results.csv", [_row("triton", "causal", CAUSAL, 10.0, 1e12)])
    b = _write(tmp_path / "b" / "results.csv", [_row("flex", "causal", CAUSAL, 11.0, 1e12),
                                                _row("triton", "causal", CAUSAL, 10.0, 1e12, n=1024)])
    checks = [c for f in (a, b) for c in targets.checks_of(targets.read_rows(f), str(f.parent))]
    assert checks == []  # flex is in another run; N = 1024 is below the targets' N


def test_cli_writes_the_table(tmp_path, capsys):
    _write(tmp_path / "run" / "x" / "results.csv", [_row("triton", "causal", CAUSAL, 10.0, 1e12),
                                                    _row("flex", "causal", CAUSAL, 9.0, 1e12)])
    out = tmp_path / "targets.md"
    assert targets.main([str(tmp_path / "run"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| dense >= 1.0x flex | **not met** | 0 | 1 | 0.90 | 0.90 |" in text
    assert "| end-to-end dense: tokens/s >= 1.1x sdpa | not measured | 0 | 0 | - | - |" in text
    assert "| **no** |" in text and text == capsys.readouterr().out


def test_cli_bad_path(tmp_path, capsys):
    assert targets.main([str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert targets.main([str(tmp_path)]) == 2  # a folder without results


def test_sink_and_softcap_overheads_compare_with_the_same_spec_without_them(tmp_path):
    sink = SWA[:-1] + ", sink=4)"
    cap = CAUSAL[:-1] + ", softcap=30.0)"
    f = _write(tmp_path / "a" / "results.csv", [
        _row("triton", "swa1024", SWA, 2.0, 125e9),
        _row("triton", "swa1024_sink4", sink, 2.2, 126e9),  # 1.10x: misses <= 1.05x
        _row("triton", "causal", CAUSAL, 10.0, 1000e9),
        _row("triton", "causal_cap", cap, 10.5, 1000e9),  # 1.05x: meets <= 1.10x
        _row("triton", "causal_cap", cap, 3.0, 1000e9, mode="fwd"),  # the cap target is fwd+bwd
    ])
    got = _by_target(targets.checks_of(targets.read_rows(f), "a"))
    assert got["sinks: <= 1.05x the time without sinks"].value == pytest.approx(1.1)
    assert not got["sinks: <= 1.05x the time without sinks"].met
    assert got["softcap: <= 1.10x the time without the cap (fwd+bwd)"].value == pytest.approx(1.05)
    assert got["softcap: <= 1.10x the time without the cap (fwd+bwd)"].met
    assert "dense >= 1.0x flex" not in got  # option rows never count as the plain kinds


def _write_dicts(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_short_sequences_from_the_grid_and_from_host_overhead(tmp_path):
    grid = _write(tmp_path / "g" / "results.csv", [
        _row("triton", "causal", CAUSAL, 1.0, 1e9, n=1024),
        _row("sdpa_flash", "causal", CAUSAL, 0.4, 1e9, n=1024),  # 0.4x
        _row("sdpa_flash", "causal", CAUSAL, 0.4, 1e9, n=1024, mode="fwd"),  # fwd is not this target
    ])
    host = _write_dicts(tmp_path / "h" / "host_overhead.csv", [
        dict(impl=i, n=n, head_dim=64, graphs=g, status=s, wall_us=w)
        for i, n, g, s, w in [("triton", 1024, "no", "ok", 500.0), ("sdpa_flash", 1024, "no", "ok", 200.0),
                              ("triton", 1024, "yes", "ok", 100.0), ("sdpa_flash", 1024, "yes", "ok", 90.0),
                              ("triton", 2048, "no", "ok", 1.0), ("sdpa_flash", 2048, "no", "ok", 9.0),
                              ("triton", 1024, "no", "error", 1.0)]])
    checks = [c for f in targets.find_results([tmp_path]) for c in targets.checks_of_file(f)]
    short = {c.case: c for c in checks if c.target == targets.SHORT}
    assert set(short) == {"causal N=1024 D=128 fwd_bwd", "per call N=1024 D=64 eager",
                          "per call N=1024 D=64 CUDA graph"}
    assert short["causal N=1024 D=128 fwd_bwd"].value == pytest.approx(0.4)
    assert short["per call N=1024 D=64 eager"].value == pytest.approx(0.4) and not short["per call N=1024 D=64 eager"].met
    assert short["per call N=1024 D=64 CUDA graph"].value == pytest.approx(0.9) and short["per call N=1024 D=64 CUDA graph"].met
    assert grid.parent.name == "g" and host.exists()


def test_end_to_end_targets(tmp_path):
    rows = [dict(attention=a, impl=i, seq_len=n, batch=1, status=s, tokens_per_s=t)
            for a, i, n, s, t in [("dense", "triton", 16384, "ok", 12000.0), ("dense", "sdpa", 16384, "ok", 10000.0),
                                  ("swa1024", "triton", 16384, "ok", 30000.0), ("swa1024", "sdpa", 16384, "ok", 15000.0),
                                  ("swa256", "triton", 16384, "ok", 1.0), ("swa256", "sdpa", 16384, "ok", 1.0),
                                  ("dense", "triton", 4096, "ok", 1.0), ("dense", "sdpa", 4096, "ok", 9.0)]]
    f = _write_dicts(tmp_path / "e2e" / "e2e.csv", rows)
    got = {c.target: c for c in targets.checks_of_file(f)}
    assert set(got) == {targets.E2E_DENSE, targets.E2E_SWA}  # N < 16k and other windows are not targets
    assert got[targets.E2E_DENSE].value == pytest.approx(1.2) and got[targets.E2E_DENSE].met
    assert got[targets.E2E_SWA].value == pytest.approx(2.0) and got[targets.E2E_SWA].met
    text = targets.markdown(list(got.values()))
    assert "| end-to-end window 1024: tokens/s >= 1.7x sdpa | met | 1 | 1 | 2.00 | 2.00 |" in text
    assert "| dense >= 1.0x flex | not measured |" in text


def test_every_check_names_a_listed_target(tmp_path):
    f = _write(tmp_path / "a" / "results.csv", [
        _row("triton", "causal", CAUSAL, 10.0, 1000e9), _row("flex", "causal", CAUSAL, 11.0, 1000e9),
        _row("sdpa_flash", "causal", CAUSAL, 12.0, 1000e9), _row("sdpa_cudnn", "causal", CAUSAL, 8.0, 1000e9),
        _row("triton", "swa1024", SWA, 2.0, 125e9), _row("flex", "swa1024", SWA, 2.6, 125e9),
    ])
    checks = targets.checks_of(targets.read_rows(f), "a")
    assert checks and {c.target for c in checks} <= set(targets.TARGETS)


def test_topk_blocks_ideal_and_selection_share(tmp_path):
    """Issue 16: fwd+bwd speedup over causal >= 70% of the (mask-exact) ideal, the selection
    alone (triton_selection, mode fwd) <= 15% of the triton fwd+bwd time."""
    topk = "AttentionSpec(kind='topk_blocks', causal=True, block_size=64, top_k=32)"
    f = _write(tmp_path / "a" / "results.csv", [
        _row("triton", "causal", CAUSAL, 10.0, 1000e9),
        _row("triton", "moba8", topk, 4.0, 250e9),  # ideal 4x, got 2.5x: 62.5%
        _row("triton_selection", "moba8", topk, 0.5, 0.0, mode="fwd"),  # 12.5% of 4.0 ms
        _row("triton", "moba8", topk, 1.0, 80e9, mode="fwd"),  # fwd rows: no issue-16 target
    ])
    got = _by_target(targets.checks_of(targets.read_rows(f), "a"))
    ideal = got["topk_blocks: fwd+bwd speedup >= 70% of ideal, selection included"]
    assert ideal.value == pytest.approx(0.625) and not ideal.met and "fwd_bwd" in ideal.case
    share = got["topk_blocks: selection <= 15% of fwd+bwd"]
    assert share.value == pytest.approx(0.125) and share.met
    assert len([c for c in targets.checks_of(targets.read_rows(f), "a") if "topk" in c.target]) == 2
