"""`python -m attnlab.distill.report` on synthetic run dirs: --students (values, order, attention
FLOPs, figure), the seed-paired differences with their intervals (KD − scratch, against the
dense student of the same size, against --baseline), the n-gram floor rows and flags (the floor
monkeypatched), and the students / swa_transfer experiment configs."""

import json
import struct

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import attnlab.report.floor as floor_module
from attnlab.configs import from_dict
from attnlab.data import DataConfig
from attnlab.distill.config import DistillConfig
from attnlab.distill.report import FIGURE, main
from attnlab.model import ModelConfig, flops_per_token
from attnlab.paths import CONF_DIR

ATTENTION = {
    "dense": ({"dense": {"kind": "dense"}}, ["dense(causal)"]),
    "swa32": ({"swa": {"kind": "sliding_window", "window": 32}}, ["sliding_window(w=32,causal)"]),
}


def model_dict(d_model, attention):
    return dict(vocab_size=256, d_model=d_model, n_layers=4, n_heads=2, n_kv_heads=1, context=128,
                attention=ATTENTION[attention][0], layer_pattern=list(ATTENTION[attention][0]))


def write_run(path, d_model, attention, seed, kd, scratch, init="random", status="complete"):
    path.mkdir(parents=True)
    (path / ".hydra").mkdir()
    overrides = [f"model.d_model={d_model}", f"attention={attention}", f"train.seed={seed}", "hydra.job.num=3"]
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"model": model_dict(d_model, attention), "data": {"context": 128}, "distill": {"init": init},
              "train": {"seed": seed}}
    (path / "config.json").write_text(json.dumps(config))
    teacher = 2.0
    metrics = {"status": status, "val_bpb": kd, "scratch_val_bpb": scratch, "teacher_val_bpb": teacher,
               "gap_closed": (scratch - kd) / (scratch - teacher), "params": 1000 * d_model,
               "layer_specs": ATTENTION[attention][1] * 4}
    (path / "metrics.json").write_text(json.dumps(metrics))


FLOOR = {3: 3.4, 5: 3.25}


@pytest.fixture(autouse=True)
def fake_floor(monkeypatch):
    """The n-gram floor without counting a corpus: FLOOR for any data config; the calls are kept."""
    calls = []

    def ngram_floor(data_cfg, orders):
        calls.append((data_cfg, tuple(orders)))
        return {k: FLOOR[k] for k in orders}

    monkeypatch.setattr(floor_module, "_load_ngram_floor", lambda: ngram_floor)
    return calls


# (d_model, attention) -> KD bpb and scratch bpb for seeds 0, 1, 2
VALUES = {(64, "dense"): ((2.5, 2.7, 2.6), (3.0, 3.0, 3.0)), (64, "swa32"): ((2.6, 2.6, 2.6), (3.0, 3.2, 3.1)),
          (32, "dense"): ((3.2, 3.2, 3.2), (3.5, 3.5, 3.5)), (32, "swa32"): ((3.3, 3.3, 3.3), (3.6, 3.6, 3.6))}
T_975_2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "runs"
    n = 0
    for (d_model, attention), (kd, scratch) in VALUES.items():
        for seed in (0, 1, 2):
            write_run(root / str(n), d_model, attention, seed, kd[seed], scratch[seed])
            n += 1
    return root


def table_rows(md: str) -> dict[str, list[str]]:
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return {row[0]: row[1:] for row in rows}


def test_students_table_values_order_and_attention_flops(sweep, tmp_path):
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--students"]) == 0
    md = (out / "distill_report.md").read_text()
    rows = table_rows(md)
    table = md.split("\n\n")[0]
    rows = table_rows(table)
    assert rows.pop("run") == ["params", "attn MFLOP/token", "KD bpb", "scratch bpb", "teacher bpb", "gap closed",
                               "seeds", "status", "notes"]
    # smallest student first; within a size, the costlier attention first; the floor rows last
    assert list(rows) == ["attention=dense model.d_model=32", "attention=swa32 model.d_model=32",
                          "attention=dense model.d_model=64", "attention=swa32 model.d_model=64",
                          "n-gram floor, 3-gram", "n-gram floor, 5-gram"]
    dense64 = rows["attention=dense model.d_model=64"]
    attn = flops_per_token(ModelConfig(**model_dict(64, "dense")), 128)["attention"]
    assert dense64[:6] == ["64,000 ± 0", f"{attn * 1e-6:.3g} ± 0", "2.600 ± 0.100", "3.000 ± 0.000",
                           "2.000 ± 0.000", "40% ± 10%"]
    assert dense64[6:] == ["0,1,2", "complete", ""]
    swa64 = rows["attention=swa32 model.d_model=64"]
    attn_swa = flops_per_token(ModelConfig(**model_dict(64, "swa32")), 128)["attention"]
    assert attn_swa < attn and swa64[1] == f"{attn_swa * 1e-6:.3g} ± 0"
    header = (out / "distill_report.csv").read_text().splitlines()[0].split(",")
    assert "attention_flops_per_token" in header and "gap_closed" in header


def test_students_figure_is_a_png(sweep, tmp_path):
    assert main([str(sweep), "--out", str(tmp_path), "--students"]) == 0
    png = (tmp_path / FIGURE).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 1000 and height > 400  # two panels side by side


def test_failed_and_teacher_init_runs(sweep, tmp_path):
    (sweep / "0" / "error.txt").write_text("Traceback ...\nValueError: boom\n")
    write_run(sweep / "t", 64, "swa32", 0, 2.4, 3.0, init="teacher")
    write_run(sweep / "t" / "again", 64, "swa32", 1, 2.4, 3.0, init="teacher")
    (sweep / "t" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["distill=transfer", "train.seed=0"]))
    (sweep / "t" / "again" / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["distill=transfer", "train.seed=1"]))
    assert main([str(sweep), "--out", str(tmp_path), "--students"]) == 0
    md = (tmp_path / "distill_report.md").read_text()
    rows = table_rows(md.split("\n\n")[0])
    failed = next(v for k, v in rows.items() if "dense" in k and "64" in k)
    assert failed[2] == "2.650 ± 0.071" and failed[7] == "2 complete, 0 partial, 1 failed" and "ValueError: boom" in md
    assert failed[8] == "n=2 seeds: below the 3 the design asks for" and failed[6] == "1,2"
    transfer = next(v for k, v in rows.items() if "distill=transfer" in k)
    assert transfer[1] == "-"  # the student is the teacher's architecture: no FLOPs from config.json
    # the figure is drawn whatever the rows (a row without attention FLOPs is left off the right panel)
    assert (tmp_path / FIGURE).stat().st_size > 0


def test_default_table_is_unchanged(sweep, tmp_path):
    assert main([str(sweep), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "distill_report.md").read_text()
    assert "| run | student bpb | teacher bpb | scratch bpb | gap closed |" in md
    assert not (tmp_path / FIGURE).exists()


def test_students_experiment_composes_every_sweep_point():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("distill", overrides=["distill/experiment=students"], return_hydra_config=True)
        assert cfg.teacher == "multirun/distill_char/teacher" and cfg.baseline == "scratch"
        assert cfg.hydra.sweep.dir == "multirun/distill_students/runs"
        params = {k: v.split(",") for k, v in cfg.hydra.sweeper.params.items()}
        assert {"dense", "swa", "bigbird"} <= set(params["attention"])
        assert len(params["model.d_model"]) >= 2 and params["train.seed"]
        for attention in params["attention"]:
            for d_model in params["model.d_model"]:
                point = compose("distill", overrides=["distill/experiment=students", f"attention={attention}",
                                                      f"model.d_model={d_model}"])
                model = from_dict(ModelConfig, OmegaConf.to_container(point.model, resolve=True), "model")
                model.vocab_size = 256  # filled from the teacher's tokenizer by the job
                assert point.data.context == model.context == 128
                assert flops_per_token(model, point.data.context)["attention"] > 0
                assert from_dict(DistillConfig, dict(point.distill), "distill").init == "random"


def paired_rows(md: str) -> dict[str, list[str]]:
    """The table of seed-paired differences (the one after the "Paired differences" line)."""
    part = md.split("Paired differences", 1)[1].split("\n\n")[1]
    return table_rows(part)


def interval(diffs):
    """(mean, low, high) of the 95% t interval of paired differences, worked out by hand."""
    n = len(diffs)
    m = sum(diffs) / n
    sd = (sum((d - m) ** 2 for d in diffs) / (n - 1)) ** 0.5
    half = T_975_2 * sd / n ** 0.5
    return m, m - half, m + half


def cell(diffs, significant=True):
    m, lo, hi = interval(diffs)
    return f"{m:+.3f} [{lo:.3f}, {hi:.3f}]" + ("" if significant else " not significant")


def test_students_paired_differences_kd_vs_scratch_and_vs_dense(sweep, tmp_path):
    assert main([str(sweep), "--out", str(tmp_path), "--students"]) == 0
    md = (tmp_path / "distill_report.md").read_text()
    rows = paired_rows(md)
    assert rows.pop("run") == ["KD − scratch (95% CI)", "KD: Δ vs attention=dense (95% CI)",
                               "scratch: Δ vs attention=dense (95% CI)"]
    kd, scratch = {k: v[0] for k, v in VALUES.items()}, {k: v[1] for k, v in VALUES.items()}

    def diff(a, b):
        return [x - y for x, y in zip(a, b, strict=True)]

    # KD against its own scratch twin, seed by seed
    assert rows["attention=dense model.d_model=64"][0] == cell(diff(kd[64, "dense"], scratch[64, "dense"]))
    assert rows["attention=swa32 model.d_model=64"][0] == cell(diff(kd[64, "swa32"], scratch[64, "swa32"]))
    assert rows["attention=dense model.d_model=32"][0] == "-0.300 [-0.300, -0.300]"  # equal differences: zero width
    # against the dense student of the same size (not of the other size); KD vs KD, scratch vs scratch
    assert rows["attention=dense model.d_model=64"][1:] == ["baseline", "baseline"]
    swa64 = rows["attention=swa32 model.d_model=64"]
    assert swa64[1] == cell(diff(kd[64, "swa32"], kd[64, "dense"]), significant=False) == \
        "+0.000 [-0.248, 0.248] not significant"
    assert swa64[2] == cell(diff(scratch[64, "swa32"], scratch[64, "dense"]), significant=False)
    assert rows["attention=swa32 model.d_model=32"][1:] == ["+0.100 [0.100, 0.100]", "+0.100 [0.100, 0.100]"]
    # the summary lines name the rows that cannot be told apart from the baseline
    line = next(x for x in md.splitlines() if x.startswith("- KD: Δ vs attention=dense"))
    assert "not significant for 1" in line and "Not significant: attention=swa32 model.d_model=64." in line
    assert "Higher: attention=swa32 model.d_model=32." in line
    assert "paired by seed" in md and "crosses 0" in md


def test_floor_rows_and_sub_floor_flags(sweep, tmp_path, fake_floor):
    assert main([str(sweep), "--out", str(tmp_path), "--students"]) == 0
    md = (tmp_path / "distill_report.md").read_text()
    rows = table_rows(md.split("\n\n")[0])
    assert rows["n-gram floor, 3-gram"][2] == "3.400" and rows["n-gram floor, 5-gram"][2] == "3.250"
    assert rows["n-gram floor, 5-gram"][7] == "reference"
    # KD 3.3 > 3.25 (d32 swa32); scratch 3.5 and 3.6 (d32); d32 dense KD 3.2 and every d64 bpb beat the 5-gram
    assert rows["attention=swa32 model.d_model=32"][8] == "KD and scratch worse than the 5-gram floor: no attention claim"
    assert rows["attention=dense model.d_model=32"][8] == "scratch worse than the 5-gram floor: no attention claim"
    assert rows["attention=dense model.d_model=64"][8] == rows["attention=swa32 model.d_model=64"][8] == ""
    assert "3-gram 3.400, 5-gram 3.250 bpb" in md
    assert ("Worse than the 5-gram floor, no attention claim: KD of attention=swa32 model.d_model=32; scratch of "
            "attention=dense model.d_model=32, attention=swa32 model.d_model=32.") in md
    assert "Teacher: val bpb 2.000, better than the 5-gram (3.250) by 1.250." in md
    # one data config in the sweep: one floor, on the runs' own data config and the orders 3 and 5
    assert len(fake_floor) == 1
    data_cfg, orders = fake_floor[0]
    assert isinstance(data_cfg, DataConfig) and data_cfg.context == 128 and orders == (3, 5)


def test_teacher_worse_than_floor_and_every_student_better(tmp_path, monkeypatch):
    def ngram_floor(data_cfg, orders):
        return {3: 4.2, 5: 2.1}

    monkeypatch.setattr(floor_module, "_load_ngram_floor", lambda: ngram_floor)
    for seed in (0, 1, 2):
        write_run(tmp_path / "runs" / str(seed), 32, "dense", seed, 1.5, 1.9)
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path), "--students"]) == 0
    md = (tmp_path / "distill_report.md").read_text()
    assert "Every KD and scratch mean beats the 5-gram floor." in md
    assert "Teacher: val bpb 2.000, better than the 5-gram (2.100)" in md
    monkeypatch.setattr(floor_module, "_load_ngram_floor", lambda: lambda data_cfg, orders: {3: 2.5, 5: 1.8})
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path), "--students"]) == 0
    md = (tmp_path / "distill_report.md").read_text()
    assert "Teacher: val bpb 2.000, worse than the 5-gram (1.800) by 0.200: no attention claim" in md
    assert "Worse than the 5-gram floor, no attention claim: scratch of every row (1)." in md


def test_no_floor_and_failing_floor(sweep, tmp_path, fake_floor, monkeypatch):
    assert main([str(sweep), "--out", str(tmp_path / "a"), "--students", "--no-floor"]) == 0
    md = (tmp_path / "a" / "distill_report.md").read_text()
    assert not fake_floor and "n-gram floor," not in md and "no attention claim" not in md

    def broken():
        raise ImportError("no numpy here")

    monkeypatch.setattr(floor_module, "_load_ngram_floor", broken)
    assert main([str(sweep), "--out", str(tmp_path / "b"), "--students"]) == 0
    md = (tmp_path / "b" / "distill_report.md").read_text()
    assert "Note: n-gram floor: skipped, attnlab.data.ngram is not usable (ImportError: no numpy here)" in md
    assert "not computed" in md and "| n-gram floor" not in md
    assert (tmp_path / "b" / FIGURE).exists()


def write_transfer_run(path, window, kind, seed, bpb, init_bpb, teacher=2.36):
    path.mkdir(parents=True)
    (path / ".hydra").mkdir()
    overrides = [f"model.attention.swa.window={window}", f"distill={kind}", f"train.seed={seed}"]
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"model": {}, "data": {"context": 128, "seed": seed}, "distill": {"init": "teacher"},
              "train": {"seed": seed}}
    (path / "config.json").write_text(json.dumps(config))
    metrics = {"status": "complete", "val_bpb": bpb, "teacher_val_bpb": teacher, "init_val_bpb": init_bpb,
               "params_ratio": 1.0, "tokens_per_s_ratio": 1.0, "flops_ratio": 0.9}
    (path / "metrics.json").write_text(json.dumps(metrics))


def test_default_table_paired_against_teacher_init_and_baseline(tmp_path):
    root = tmp_path / "runs"
    bpb = {("8", "transfer_kd"): (2.39, 2.38, 2.40), ("8", "transfer_ce"): (2.40, 2.40, 2.40),
           ("32", "transfer_kd"): (2.361, 2.362, 2.363), ("32", "transfer_ce"): (2.37, 2.35, 2.36)}
    init = {"8": 2.401, "32": 2.367}
    for n, ((window, kind), values) in enumerate(bpb.items()):
        for seed in (0, 1, 2):
            write_transfer_run(root / f"{n}{seed}", window, kind, seed, values[seed], init[window])
    assert main([str(root), "--out", str(tmp_path), "--baseline", "distill=transfer_ce"]) == 0
    md = (tmp_path / "distill_report.md").read_text()
    assert "| run | student bpb | teacher bpb | scratch bpb | gap closed |" in md
    rows = paired_rows(md)
    assert rows.pop("run") == ["student − teacher (95% CI)", "student − before training (95% CI)",
                               "student: Δ vs distill=transfer_ce (95% CI)"]
    kd8 = rows["distill=transfer_kd model.attention.swa.window=8"]
    assert kd8[0] == cell([b - 2.36 for b in bpb["8", "transfer_kd"]])
    assert kd8[1] == cell([b - 2.401 for b in bpb["8", "transfer_kd"]], significant=False)  # -0.011 ± 0.025
    assert kd8[2] == cell([a - b for a, b in zip(bpb["8", "transfer_kd"], bpb["8", "transfer_ce"], strict=True)],
                          significant=False)  # -0.01 ± 0.0248
    assert rows["distill=transfer_ce model.attention.swa.window=32"][2] == "baseline"
    kd32 = rows["distill=transfer_kd model.attention.swa.window=32"]
    assert kd32[2].endswith("not significant")  # +0.003 with a wide interval: the control varies by seed
    assert "The baseline of a row is the row whose overrides are its own with distill=transfer_ce." in md
    assert "dense student" not in md
    assert "Every student mean beats the 5-gram floor." in md  # no scratch runs: only the students are checked


def test_bad_or_missing_baseline(sweep, tmp_path, capsys):
    assert main([str(sweep), "--out", str(tmp_path), "--students", "--baseline", "dense"]) == 2
    assert "--baseline 'dense' is not allowed: one override KEY=VALUE" in capsys.readouterr().err
    assert main([str(sweep), "--out", str(tmp_path), "--students", "--baseline", "attention=bigbird"]) == 0
    md = (tmp_path / "distill_report.md").read_text()
    assert set(r[1] for r in list(paired_rows(md).values())[1:]) == {"no baseline row"}
    assert "Note: no row has a baseline row (attention=bigbird) other than itself." in md


@pytest.mark.parametrize("experiment", ["students", "swa_transfer"])
def test_experiments_run_three_seeds_each_its_own_batches(experiment):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("distill", overrides=[f"distill/experiment={experiment}"], return_hydra_config=True)
        seeds = [int(s) for s in cfg.hydra.sweeper.params["train.seed"].split(",")]
        assert len(set(seeds)) >= 3
        point = compose("distill", overrides=[f"distill/experiment={experiment}", "train.seed=2"])
        assert OmegaConf.to_container(point, resolve=True)["data"]["seed"] == 2  # data.seed follows train.seed
