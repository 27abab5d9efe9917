"""`python -m attnlab.bench.regs`: the offline sm_90 register report compiles a real launch's
arguments and parses ptxas (one config, in a subprocess without the Triton interpreter)."""

import os
import re
import subprocess
import sys

import pytest

from attnlab.bench.regs import candidate_configs, main


def test_report_compiles_one_forward_config_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "attnlab.bench.regs", "--head-dims", "64", "--kernels", "fwd",
                           "--options", "sink"], capture_output=True, text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    row = re.search(r"^fwd\s+64 causal\s+sink\s+(\d+)\s+(\d+)\s+\d+\s+\d+ \|\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$",
                    done.stdout, re.M)  # fmt: skip
    assert row, done.stdout
    regs, smem = int(row.group(3)), int(row.group(6))
    assert 0 < regs <= 255 and smem > 0


def test_configs_are_the_launchers_and_bad_input_is_named(capsys):
    assert candidate_configs("dkdv", 64, "first") == candidate_configs("dkdv", 64, "fitting")[:1]
    assert candidate_configs("fwd", 64, "128,64,8,3") == [(128, 64, 8, 3)]
    assert main(["--head-dims", "300"]) == 2 and "300" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--kernels", "bwd"])
