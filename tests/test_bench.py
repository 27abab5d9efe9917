"""The benchmark harness: grid, timing bookkeeping, skips, reports, config, Hydra entry point.

CPU by default and fast (tiny grids, a few ms per case); correctness of the numbers
themselves is the attention tests' job, here we check what the harness does with them.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnlab.attention import AttentionSpec
from attnlab.bench import harness
from attnlab.bench.config import BenchConfig
from attnlab.bench.harness import run_benchmark
from attnlab.bench.report import markdown, write_csv, write_plot

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
FAST = dict(device="cpu", warmup_ms=1, rep_ms=3, batch=1, heads=2, kv_heads=1, head_dims=[32], dtypes=["float32"])
CAUSAL = {"name": "causal", "kind": "dense", "causal": True}
SWA = {"name": "swa16", "kind": "sliding_window", "causal": True, "window": 16}


def _rows_by(rows):
    return {(r.impl, r.spec, r.n, r.mode): r for r in rows}


@pytest.fixture(scope="module")
def tiny_rows():
    cfg = BenchConfig(
        impls=["reference", "sdpa", "flex", "sdpa_efficient", "sdpa_cudnn"],
        baseline="sdpa", baselines=["reference"], specs=[CAUSAL, SWA],
        seq_lens=[32, 64], modes=["fwd", "bwd", "fwd_bwd"], **FAST,
    )
    return cfg, run_benchmark(cfg)


def test_grid_is_complete(tiny_rows):
    cfg, rows = tiny_rows
    assert len(rows) == 5 * 2 * 2 * 3  # impls x specs x seq_lens x modes
    assert len(_rows_by(rows)) == len(rows)


def test_measured_rows_are_consistent(tiny_rows):
    cfg, rows = tiny_rows
    specs = dict(cfg.named_specs)
    measured = [r for r in rows if r.ok]
    assert {r.impl for r in measured} == {"reference", "sdpa", "flex"}
    for r in measured:
        assert r.ms > 0 and math.isfinite(r.ms)
        expected = specs[r.spec].flops(batch=1, heads=2, n_q=r.n, n_k=r.n, head_dim=32, mode=r.mode)
        assert r.flops == expected
        assert r.tflops == pytest.approx(r.flops / (r.ms * 1e-3) / 1e12, rel=1e-9)
        assert math.isnan(r.peak_mib)  # CPU: no memory number
        assert r.reason == ""


def test_speedups_against_baselines(tiny_rows):
    _, rows = tiny_rows
    by = _rows_by(rows)
    for r in rows:
        if not r.ok:
            assert r.speedups == {}
            continue
        assert list(r.speedups) == ["sdpa", "reference"]
        for base in ("sdpa", "reference"):
            t_base = by[(base, r.spec, r.n, r.mode)].ms
            assert r.speedups[base] == pytest.approx(t_base / r.ms)
        if r.impl in ("sdpa", "reference"):
            assert r.speedups[r.impl] == 1.0


def test_cases_that_cannot_run_are_skipped_with_reasons(tiny_rows):
    _, rows = tiny_rows
    by = _rows_by(rows)
    for spec in ("causal", "swa16"):
        for n in (32, 64):
            for mode in ("bwd", "fwd_bwd"):
                row = by[("flex", spec, n, mode)]
                assert row.status == "skipped" and "backward" in row.reason
            assert by[("flex", spec, n, "fwd")].ok
            for impl, backend in (("sdpa_efficient", "EFFICIENT_ATTENTION"), ("sdpa_cudnn", "CUDNN_ATTENTION")):
                row = by[(impl, spec, n, "fwd")]
                assert row.status == "skipped" and backend in row.reason
                assert math.isnan(row.ms) and math.isnan(row.tflops)


def test_baseline_is_measured_even_if_not_listed():
    cfg = BenchConfig(impls=["reference"], baseline="sdpa", specs=[CAUSAL], seq_lens=[32], modes=["fwd"], **FAST)
    rows = run_benchmark(cfg)
    assert [r.impl for r in rows] == ["reference", "sdpa"]
    assert rows[0].speedups["sdpa"] == pytest.approx(rows[1].ms / rows[0].ms)


def test_sdpa_backend_variant_runs_or_says_why():
    # On CPU torch has FLASH_ATTENTION and MATH kernels (its CPU flash even takes a mask);
    # on CUDA flash refuses a mask and the row is skipped with torch's reason (GPU test below).
    cfg = BenchConfig(impls=["sdpa_math", "sdpa_flash"], baseline="sdpa_math", specs=[CAUSAL, SWA],
                      seq_lens=[32], modes=["fwd", "fwd_bwd"], **FAST)
    rows = run_benchmark(cfg)
    assert all(r.ok for r in rows if r.impl == "sdpa_math")
    for r in rows:
        assert r.ok or r.reason


def test_a_failing_case_does_not_stop_the_run(monkeypatch):
    real = harness._impl_fn

    def flaky(impl, spec, *args):
        if impl == "reference":
            def oom(q, k, v):
                raise torch.cuda.OutOfMemoryError("tried to allocate 80 GiB")
            return oom
        return real(impl, spec, *args)

    monkeypatch.setattr(harness, "_impl_fn", flaky)
    cfg = BenchConfig(impls=["reference", "sdpa"], specs=[CAUSAL], seq_lens=[32, 64], modes=["fwd"], **FAST)
    rows = run_benchmark(cfg)
    assert [(r.impl, r.status) for r in rows] == [
        ("reference", "skipped"), ("sdpa", "ok"), ("reference", "skipped"), ("sdpa", "ok")]
    assert "out of memory" in rows[0].reason and "80 GiB" in rows[0].reason


def test_unimportable_triton_kernel_is_a_skip(monkeypatch):
    # The kernels are written concurrently: an import error must become a reason, not a crash.
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # so the triton impl accepts the CPU
    monkeypatch.setattr(harness, "interpreter_on", lambda: False)  # ... and the bench times it
    monkeypatch.setitem(sys.modules, "attnlab.kernels.flash", None)  # import fails
    cfg = BenchConfig(impls=["triton", "sdpa"], specs=[CAUSAL], seq_lens=[32], modes=["fwd"], **FAST)
    rows = run_benchmark(cfg)
    assert rows[0].status == "skipped" and "Error" in rows[0].reason
    assert rows[1].ok


def test_triton_on_cpu_is_skipped_with_reason():
    cfg = BenchConfig(impls=["triton"], baseline=None, specs=[CAUSAL], seq_lens=[32], modes=["fwd"], **FAST)
    (row,) = run_benchmark(cfg)
    assert row.status == "skipped"
    assert "TRITON_INTERPRET" in row.reason or "CUDA" in row.reason


def test_selection_alone_is_timed_for_topk_blocks_forward_only():
    """triton_selection: the topk_blocks selection and index lists (pure torch, so timed on CPU
    too); no FLOPs; skipped with a reason for other kinds and for modes with a backward."""
    topk = {"name": "moba", "kind": "topk_blocks", "causal": True, "block_size": 16, "top_k": 2}
    cfg = BenchConfig(impls=["triton_selection"], baseline=None, specs=[topk, CAUSAL], seq_lens=[64],
                      modes=["fwd", "fwd_bwd"], **FAST)
    rows = {(r.spec, r.mode): r for r in run_benchmark(cfg)}
    fwd = rows[("moba", "fwd")]
    assert fwd.ok and fwd.ms > 0 and fwd.flops == 0
    for key in (("moba", "fwd_bwd"), (CAUSAL["name"], "fwd")):
        assert rows[key].status == "skipped" and "topk_blocks" in rows[key].reason


def test_gpu_topk_preset_is_issue_16s_case():
    """N = 16k, D = 128, block 64, density 1/8 (top_k = N / 64 / 8), bf16, fwd+bwd, with our
    dense causal kernel and the selection alone in the same run."""
    cfg = BenchConfig.from_dict(_compose(["bench=gpu_topk", "device=cpu"]))
    specs = dict(cfg.named_specs)
    topk = next(s for s in specs.values() if s.kind == "topk_blocks")
    assert cfg.seq_lens == (16384,) and cfg.head_dims == (128,) and cfg.dtypes == ("bfloat16",)
    assert topk.block_size == 64 and topk.top_k * 8 == 16384 // 64 and topk.causal
    assert "fwd_bwd" in cfg.modes and "fwd" in cfg.modes
    assert {"triton", "triton_selection"} <= set(cfg.all_impls)
    assert any(s.kind == "dense" and s.causal for s in specs.values())


def test_reports(tiny_rows, tmp_path):
    cfg, rows = tiny_rows
    path = write_csv(rows, tmp_path / "results.csv", cfg.ratio_baselines)
    with path.open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert {"ms", "tflops", "peak_mib", "speedup_vs_sdpa", "speedup_vs_reference", "reason"} <= set(table[0])
    skipped = [t for t in table if t["status"] == "skipped"]
    assert skipped and all(t["reason"] and t["ms"] == "" for t in skipped)

    text = markdown(rows, cfg.ratio_baselines)
    assert "| impl | spec | N | D | dtype | mode | ms | TFLOP/s | peak MiB | vs sdpa | vs reference |" in text
    assert text.count("\n| ") == 1 + sum(r.ok for r in rows)  # header + one line per measured row
    assert "Skipped (" in text and "FlexAttention has no backward" in text

    png = write_plot(rows, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"impls": ["reference", "tritn"]}, ["impls", "'tritn'", "sdpa_flash"]),
        ({"baseline": "fast"}, ["baseline", "'fast'"]),
        ({"baselines": ["sdpa", "nope"]}, ["baselines", "'nope'"]),
        ({"modes": ["fwd", "backward"]}, ["modes", "'backward'", "fwd_bwd"]),
        ({"dtypes": ["int8"]}, ["dtypes", "'int8'", "bfloat16"]),
        ({"seq_lens": [128, 0]}, ["seq_lens", "0", "positive"]),
        ({"head_dims": [-64]}, ["head_dims", "-64", "positive"]),
        ({"seq_lens": []}, ["seq_lens", "empty"]),
        ({"batch": 0}, ["batch=0", "positive"]),
        ({"heads": 6, "kv_heads": 4}, ["heads=6", "kv_heads=4"]),
        ({"warmup_ms": 0}, ["warmup_ms=0", "positive"]),
        ({"device": "tpu"}, ["device='tpu'", "cuda:N"]),
        ({"specs": [{"kind": "sparse"}]}, ["specs[0]", "'sparse'", "sliding_window"]),
        ({"specs": [{"kind": "sliding_window", "window": 0}]}, ["specs[0]", "window"]),
        ({"specs": [CAUSAL, CAUSAL]}, ["unique", "causal"]),
        ({"specs": ["dense"]}, ["specs[0]", "dict"]),
        ({"specs": [{**CAUSAL, "documents": 0}]}, ["specs[0]", "documents=0", "from 1 to"]),
        ({"specs": [{**CAUSAL, "documents": 600}], "seq_lens": [512]}, ["documents=600", "512"]),
        ({"specs": [{**CAUSAL, "documents": 2.5}]}, ["documents=2.5", "an int"]),
    ],
)
def test_config_errors_name_key_value_and_allowed(overrides, words):
    with pytest.raises(ValueError) as info:
        BenchConfig(**overrides)
    for word in words:
        assert word in str(info.value)


def test_config_unknown_key():
    with pytest.raises(ValueError, match="unknown key.*seqlens.*allowed: .*seq_lens"):
        BenchConfig.from_dict({"seqlens": [128]})


def test_config_normalises():
    cfg = BenchConfig(impls="sdpa", baseline="flex", baselines=["sdpa", "flex"], dtypes=["bf16", "bfloat16", "fp32"],
                      specs=[{"kind": "sliding_window", "causal": True, "window": [8, 0]}])
    assert cfg.impls == ("sdpa",)
    assert cfg.ratio_baselines == ("flex", "sdpa")
    assert cfg.all_impls == ("sdpa", "flex")
    assert cfg.dtypes == ("bfloat16", "float32")
    ((name, spec),) = cfg.named_specs
    assert spec == AttentionSpec(kind="sliding_window", causal=True, window=(8, 0)) and name == spec.name


def test_equal_documents():
    assert harness.equal_documents(10, 3).tolist() == [0, 3, 6, 10]
    assert harness.equal_documents(16, 16).tolist() == list(range(17))
    with pytest.raises(ValueError, match="documents=5"):
        harness.equal_documents(4, 5)


def test_documents_mask_the_impls_and_the_flops():
    docs = {**CAUSAL, "name": "docs4", "documents": 4}
    cfg = BenchConfig(impls=["reference", "sdpa", "flex"], specs=[CAUSAL, docs], seq_lens=[64], modes=["fwd"], **FAST)
    assert cfg.documents("docs4") == 4 and cfg.documents("causal") is None
    rows = _rows_by(run_benchmark(cfg))
    causal, packed = rows[("sdpa", "causal", 64, "fwd")], rows[("sdpa", "docs4", 64, "fwd")]
    assert all(r.ok for r in rows.values())
    pairs = lambda n: n * (n + 1) // 2  # noqa: E731  causal pairs of one document
    assert causal.flops == 4 * 32 * 2 * pairs(64) and packed.flops == 4 * 32 * 2 * 4 * pairs(16)
    assert packed.spec_repr.endswith("+ 4 documents")
    # what the impls are given: the cu_seqlens of 4 documents (a token sees its own document only)
    q, k, v = (torch.randn(1, 2, 64, 32) for _ in range(3))
    cu = harness.equal_documents(64, 4)
    spec = AttentionSpec(kind="dense", causal=True)
    for impl in ("sdpa", "sdpa_math", "flex"):
        out = harness._impl_fn(impl, spec, cu)(q, k, v)
        first_doc = harness._impl_fn("reference", spec)(q[:, :, :16], k[:, :, :16], v[:, :, :16])
        torch.testing.assert_close(out[:, :, :16], first_doc, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(out, harness._impl_fn(impl, spec)(q, k, v), atol=1e-3)


def test_rows_are_handed_out_as_they_come(tmp_path):
    seen = []
    cfg = BenchConfig(impls=["reference", "sdpa"], specs=[CAUSAL], seq_lens=[32, 64], modes=["fwd"], **FAST)
    rows = run_benchmark(cfg, on_row=lambda so_far: seen.append([(r.impl, r.n, r.speedups.get("sdpa")) for r in so_far]))
    assert [len(s) for s in seen] == [1, 2, 3, 4]
    assert seen[0][0][2] is None or math.isnan(seen[0][0][2])  # sdpa not measured yet: no ratio
    assert seen[1][0][2] == pytest.approx(rows[0].speedups["sdpa"])  # filled once the baseline ran


# ---------------------------------------------------------------------------- Hydra
def _compose(overrides=()):
    hydra = pytest.importorskip("hydra")
    from omegaconf import OmegaConf

    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra.compose(config_name="bench", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def test_default_config_composes_and_is_cpu_sized():
    cfg = BenchConfig.from_dict(_compose())
    assert cfg.device == "auto" and cfg.baseline == "sdpa"
    assert set(cfg.impls) == {"reference", "sdpa", "flex"}
    assert max(cfg.seq_lens) <= 1024 and len(cfg.named_specs) >= 3
    assert {spec.kind for _, spec in cfg.named_specs} == {"dense", "sliding_window", "block_sparse"}


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR / "bench").glob("*.yaml")))
def test_presets_compose(preset):
    # device=cpu so a GPU preset validates on a CPU machine too
    BenchConfig.from_dict(_compose([f"bench={preset}", "device=cpu"]))


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF_DIR.glob("bench*.yaml")))
def test_primary_bench_configs_compose(name):
    # e.g. bench.yaml and a `--config-name bench_gpu` variant
    hydra = pytest.importorskip("hydra")
    from omegaconf import OmegaConf

    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra.compose(config_name=name, overrides=["device=cpu"])
    BenchConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))


def _run_cli(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, "-m", "attnlab.bench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_entry_point_end_to_end(tmp_path):
    pytest.importorskip("hydra")
    out = tmp_path / "run"
    proc = _run_cli(["bench=smoke", "device=cpu", "seq_lens=[32,64]", "impls=[reference,sdpa,flex]",
                     "modes=[fwd,fwd_bwd]", f"hydra.run.dir={out}"], cwd=tmp_path)  # cwd: not the repo
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("results.csv", "results.md", "plot.png", "env.json"):
        assert (out / name).stat().st_size > 0, name
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 * 2 * 2 * 2  # impls x specs x seq_lens x modes (smoke: 2 specs)
    assert "| impl | spec | N |" in proc.stdout and "| sdpa | dense_causal | 64 |" in proc.stdout
    assert "Skipped (4 of 24 cases)" in proc.stdout  # flex fwd_bwd on CPU
    assert str(out / "results.csv") in proc.stdout
    env = (out / "env.json").read_text()
    for key in ("device_name", "torch", "triton", "python", "git_commit", "date", "hostname"):
        assert f'"{key}"' in env


def test_entry_point_interrupted_reports_the_cases_so_far(tmp_path):
    # gpu-check stops a stage at its time cap with SIGINT: the rows measured so far must survive.
    pytest.importorskip("hydra")
    import signal
    import time

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "attnlab.bench", "device=cpu", "impls=[reference]", "baseline=null",
                             "seq_lens=[16,4096,4096,4096]", "modes=[fwd]", "warmup_ms=1", "rep_ms=200", "plot=false",
                             f"hydra.run.dir={out}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            # a shell's background job (`make test &`) ignores SIGINT and so would the
                            # child: give it the default, which Python turns into KeyboardInterrupt
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Wait for the first measured row (the event), however slow the machine: the bound only
    # catches a process that hangs, it is not a guess at how fast a busy 2-core box is.
    deadline = time.monotonic() + 900
    while not (out / "results.csv").exists():
        exited = proc.poll() is not None
        if exited or time.monotonic() > deadline:
            proc.kill()
            _, stderr = proc.communicate()
            pytest.fail(f"no row was measured (the process {'exited' if exited else 'hung'}): {stderr[-2000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 130, stderr[-2000:]
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    total = 3 * 4  # specs x seq_lens
    assert 1 <= len(rows) < total and rows[0]["n"] == "16" and rows[0]["status"] == "ok"
    assert f"Interrupted: {len(rows)} of {total} cases ran." in (out / "results.md").read_text()
    assert "| reference | dense_causal | 16 |" in stdout


def test_entry_point_rejects_bad_config_before_timing(tmp_path):
    pytest.importorskip("hydra")
    proc = _run_cli(["impls=[sdpa,warp]", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "impls contains 'warp'" in proc.stderr
    assert not (tmp_path / "run" / "results.csv").exists()


# ---------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_gpu_benchmark_smoke():
    cfg = BenchConfig(device="cuda", impls=["sdpa", "flex", "triton", "sdpa_flash", "sdpa_math"],
                      baselines=["sdpa_flash"], specs=[CAUSAL, SWA], seq_lens=[256], head_dims=[64],
                      dtypes=["bfloat16"], modes=["fwd", "bwd", "fwd_bwd"], batch=1, heads=4, kv_heads=2,
                      warmup_ms=5, rep_ms=20)
    rows = run_benchmark(cfg)
    by = _rows_by(rows)
    for mode in ("fwd", "bwd", "fwd_bwd"):
        for impl in ("sdpa", "flex", "sdpa_math"):
            row = by[(impl, "causal", 256, mode)]
            assert row.ok, row.reason
            assert row.ms > 0 and row.peak_mib >= 0
        assert by[("sdpa_flash", "causal", 256, mode)].ok
        masked = by[("sdpa_flash", "swa16", 256, mode)]
        assert masked.status == "skipped" and masked.reason  # flash takes no mask
    for r in rows:
        assert r.ok or r.reason
