"""One way to fail: every `python -m attnlab.<job>` turns bad input into ONE line on stderr,
``error: ...``, naming the key (or file or option), and exits with status 2; no traceback.

Most cases call each job's command function in-process (a subprocess costs seconds of
imports on a 2-core box); `test_commands_fail_the_same_way_as_processes` runs a few as real
``python -m`` processes; `test_a_run_dir_eval_takes_is_a_sample_source` checks the good path
the sources share.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnlab.paths import REPO_ROOT

BIG = str(2**70)
HYDRA_QUIET = ["hydra/job_logging=none", "hydra/hydra_logging=none", "hydra.output_subdir=null"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny trained run (run dir + checkpoint), a text file, a truncated checkpoint, a sweep dir."""
    from attnlab.data import DataConfig
    from attnlab.model import ModelConfig
    from attnlab.train.config import TrainConfig
    from attnlab.train.loop import train

    tmp = tmp_path_factory.mktemp("cli_errors")
    data = DataConfig(context=32, batch_size=2, val_tokens=256, cache_dir=str(tmp / "cache"))
    quiet = TrainConfig(steps=1, warmup_steps=0, eval_every=0, logger="jsonl", progress=False, device="cpu")
    train(ModelConfig(d_model=16, n_layers=1, n_heads=2, context=32), data, quiet, tmp / "run")
    text = tmp / "notes.txt"
    text.write_text("not a checkpoint\n")
    truncated = tmp / "truncated.pt"
    truncated.write_bytes((tmp / "run" / "checkpoints" / "latest.pt").read_bytes()[:200])
    return {"RUN": str(tmp / "run"), "TEXT": str(text), "TRUNC": str(truncated), "MISSING": str(tmp / "nope.pt"),
            "CACHE": str(tmp / "cache"), "TMP": str(tmp)}


def _entry(job: str):
    """The function `python -m attnlab.<job>` runs (argv from sys.argv); returns an exit code or raises SystemExit."""
    if job == "train":
        from attnlab.train.__main__ import cli
    elif job == "distill":
        from attnlab.distill.__main__ import cli
    elif job == "eval":
        from attnlab.eval.__main__ import main as cli
    elif job == "sample":
        from attnlab.sample import main as cli
    elif job == "bench":
        from attnlab.bench.__main__ import cli
    elif job == "report":
        from attnlab.report.__main__ import main as report

        return lambda: report(sys.argv[1:])
    else:
        from attnlab.viz.__main__ import main as viz

        return lambda: viz(sys.argv[1:])
    return cli


HYDRA_JOBS = ("train", "distill", "eval", "sample", "bench")


def run_in_process(job, args, files, tmp_path, monkeypatch, capsys) -> tuple[int, str]:
    args = [a.format(**files) for a in args]
    if job in HYDRA_JOBS:
        args += [f"hydra.run.dir={tmp_path / 'hydra'}", *HYDRA_QUIET]
    monkeypatch.setattr(sys, "argv", [f"attnlab.{job}", *args])
    monkeypatch.setenv("ATTNLAB_CACHE", files["CACHE"])
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    capsys.readouterr()
    try:
        code = _entry(job)()  # an exception escaping here is the traceback a user would see
    except SystemExit as exited:
        code = exited.code
    return code, capsys.readouterr().err


def assert_one_error_line(code, err: str, key: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert key in lines[0], (key, lines[0])
    assert "Traceback" not in err


# job, args ({RUN}, {TEXT}, {TRUNC}, {MISSING}, {TMP} are the fixture's files), what the line must name
CASES = [
    ("train", ["model=tiny", "train.lr=-1"], "train.lr=-1"),
    ("train", ["model=tiny", f"train.seed={BIG}"], f"train.seed={BIG}"),
    ("train", ["model=tiny", "data.seed=-1"], "data.seed=-1"),
    ("train", ["model=huge"], "model/huge"),
    ("train", ["model=tiny", "train.attn_impl=sdpa"], "train.attn_impl"),
    ("train", ["model=tiny", "model.attn_impl=bogus"], "model.attn_impl='bogus'"),
    ("distill", ["model=tiny"], "teacher is not set"),
    ("distill", ["model=tiny", "teacher={MISSING}"], "teacher="),
    ("distill", ["model=tiny", "teacher={TEXT}"], "teacher="),
    ("distill", ["model=tiny", "teacher={RUN}", "baseline=bogus"], "baseline='bogus'"),
    ("eval", [], "source is not set"),
    ("eval", ["source={MISSING}"], "source="),
    ("eval", ["source={TEXT}"], "cannot be read as a model"),
    ("eval", ["source={TRUNC}"], "damaged"),
    ("eval", ["source={RUN}", "windows=0"], "windows=0"),
    ("eval", ["source={RUN}", "batch_size=0"], "batch_size=0"),
    ("eval", ["source={RUN}", "attn_impl=bogus"], "attn_impl='bogus' is unknown; allowed: auto, reference"),
    ("eval", ["source={RUN}", "tasks=[perplexity]"], "tasks="),
    ("eval", ["source={RUN}", "out_dir={TEXT}"], "out_dir="),
    ("sample", [], "checkpoint is not set"),
    ("sample", ["checkpoint={MISSING}"], "checkpoint="),
    ("sample", ["checkpoint={TEXT}"], "cannot be read as a model"),
    ("sample", ["checkpoint={TRUNC}"], "damaged"),
    ("sample", ["checkpoint={RUN}", "temperature=0"], "temperature=0"),
    ("sample", ["checkpoint={RUN}", "top_k=0"], "top_k=0"),
    ("sample", ["checkpoint={RUN}", "num_samples=0"], "num_samples=0"),
    ("sample", ["checkpoint={RUN}", "seed=-1"], "seed=-1"),
    ("sample", ["checkpoint={RUN}", "device=tpu"], "device='tpu'"),
    ("sample", ["checkpoint={RUN}", "attn_impl=bogus"], "attn_impl='bogus' is unknown; allowed: auto, reference"),
    ("sample", ["checkpoint={RUN}", "temprature=2"], "temprature"),
    ("bench", ["impls=[bogus]"], "impls contains 'bogus'"),
    ("bench", [f"seed={BIG}"], f"seed={BIG}"),
    ("bench", ["seq_lens=[0]"], "seq_lens contains 0"),
    ("bench", ["bench=nope"], "bench/nope"),
    ("report", [], "sweep_dir"),
    ("report", ["{MISSING}"], "sweep dir"),
    ("report", ["{TMP}", "--confidence", "2"], "--confidence"),
    ("report", ["{TMP}", "--metric", "perplexity"], "--metric"),
    ("viz", ["--n", "0"], "--n 0"),
    ("viz", ["--n", "100000"], "--n 100000"),
    ("viz", ["--pattern", "random", "--density", "2"], "--density"),
    ("viz", ["--block-size", "3"], "--block-size"),
    ("viz", ["--kind", "spiral"], "--kind"),
    ("viz", ["--pattern", "random", "--density", "0.5", "--seed", BIG], "--seed"),
]


@pytest.mark.parametrize("job,args,key", CASES, ids=[f"{j}:{' '.join(a) or '-'}" for j, a, _ in CASES])
def test_bad_input_is_one_error_line_and_exit_2(job, args, key, files, tmp_path, monkeypatch, capsys):
    code, err = run_in_process(job, args, files, tmp_path, monkeypatch, capsys)
    assert_one_error_line(code, err, key)


def test_hydra_full_error_adds_the_traceback_and_keeps_status_2(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", ["attnlab.sample", f"checkpoint={files['TEXT']}",
                                      f"hydra.run.dir={tmp_path}", *HYDRA_QUIET])
    with pytest.raises(SystemExit) as exited:
        _entry("sample")()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" in err and "CorruptCheckpointError" in err
    assert err.strip().splitlines()[-1].startswith("error: checkpoint=")
    assert os.environ["HYDRA_FULL_ERROR"] == "1"  # the user's setting is left as it was


def test_a_run_dir_eval_takes_is_a_sample_source(files, tmp_path, monkeypatch, capsys):
    code, err = run_in_process("sample", ["checkpoint={RUN}", "prompt=ROMEO.", "max_new_tokens=4", "greedy=true"],
                               files, tmp_path, monkeypatch, capsys)
    assert code in (0, None), err[-2000:]
    from attnlab.sample import sample_text

    texts = sample_text(files["RUN"], "ROMEO.", max_new_tokens=4, greedy=True, device="cpu")
    assert len(texts) == 1 and texts[0].startswith("ROMEO.")


# Real processes: the `python -m` wiring and the interpreter's own traceback printing, for a
# Hydra override error, a checkpoint that is not a model, a bad value and argparse usage errors
# (distill and eval share train's and sample's wiring; each process costs seconds of imports).
PROCESS_CASES = [
    ("train", ["model=huge"], "model/huge"),
    ("sample", ["checkpoint={TEXT}"], "cannot be read as a model"),
    ("bench", ["impls=[bogus]"], "impls contains 'bogus'"),
    ("report", ["{MISSING}"], "sweep dir"),
    ("viz", ["--kind", "spiral"], "--kind"),
]


def test_commands_fail_the_same_way_as_processes(files, tmp_path):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "ATTNLAB_CACHE": files["CACHE"], "PYTHONPATH": str(Path(REPO_ROOT) / "src")}
    def start(job, args):
        args = [a.format(**files) for a in args]
        if job in HYDRA_JOBS:
            args.append(f"hydra.run.dir={tmp_path / job}")
        return subprocess.Popen([sys.executable, "-m", f"attnlab.{job}", *args], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    for i in range(0, len(PROCESS_CASES), 2):  # two at a time: the box has two cores
        batch = [(key, start(job, args)) for job, args, key in PROCESS_CASES[i:i + 2]]
        for key, proc in batch:
            _, err = proc.communicate(timeout=900)
            assert_one_error_line(proc.returncode, err, key)
