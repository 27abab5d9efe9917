"""experiments/kernel_bench/gpu_check.sh --dry-run: every stage with its cap, within the budget."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "kernel_bench" / "gpu_check.sh"
STAGES = ["tests", "bench_gpu", "breakdown", "e2e", "host", "bench_swa", "bench_topk", "bench_sparse"]
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _dry_run(*args):
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": "py"})


def test_dry_run_lists_stages_and_caps_within_8_minutes(tmp_path):
    out_dir = tmp_path / "a b"
    res = _dry_run(str(out_dir))
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if re.match(r"\w+ +cap +\d+s", line)]
    assert [line.split()[0] for line in lines] == STAGES
    caps = [int(re.search(r"cap +(\d+)s", line).group(1)) for line in lines]
    total = re.search(r"sum of caps (\d+)s \+ reserve (\d+)s = (\d+)s of 480s", res.stdout)
    assert total and int(total.group(1)) == sum(caps) and int(total.group(3)) <= 480
    assert f"--out {out_dir}/breakdown" in res.stdout and "py -m attnlab.bench.e2e" in res.stdout
    assert not out_dir.exists()  # a dry run runs nothing and writes nothing


def test_dry_run_scales_with_the_budget_and_rejects_a_tiny_one(tmp_path):
    res = _dry_run(str(tmp_path), "960")
    assert res.returncode == 0 and "bench_gpu     cap  172s" in res.stdout
    res = _dry_run(str(tmp_path), "40")
    assert res.returncode == 2 and "BUDGET_S=40" in res.stderr
