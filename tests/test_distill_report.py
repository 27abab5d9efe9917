"""`python -m attnlab.distill.report --students` on synthetic run dirs (values, order, attention
FLOPs, figure), and the students experiment config (conf/distill/experiment/students.yaml)."""

import json
import struct

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from attnlab.configs import from_dict
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


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "runs"
    n = 0
    # (d_model, attention) -> KD bpb and scratch bpb for seeds 0 and 1
    values = {(64, "dense"): ((2.5, 2.7), (3.0, 3.0)), (64, "swa32"): ((2.6, 2.6), (3.0, 3.2)),
              (32, "dense"): ((3.2, 3.2), (3.5, 3.5)), (32, "swa32"): ((3.3, 3.3), (3.6, 3.6))}
    for (d_model, attention), (kd, scratch) in values.items():
        for seed in (0, 1):
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
    assert rows.pop("run") == ["params", "attn MFLOP/token", "KD bpb", "scratch bpb", "teacher bpb", "gap closed",
                               "seeds", "status"]
    # smallest student first; within a size, the costlier attention first
    assert list(rows) == ["attention=dense model.d_model=32", "attention=swa32 model.d_model=32",
                          "attention=dense model.d_model=64", "attention=swa32 model.d_model=64"]
    dense64 = rows["attention=dense model.d_model=64"]
    attn = flops_per_token(ModelConfig(**model_dict(64, "dense")), 128)["attention"]
    assert dense64[:6] == ["64,000 ± 0", f"{attn * 1e-6:.3g} ± 0", "2.600 ± 0.141", "3.000 ± 0.000",
                           "2.000 ± 0.000", "40% ± 14%"]
    assert dense64[6:] == ["0,1", "complete"]
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
    rows = table_rows(md)
    failed = next(v for k, v in rows.items() if "dense" in k and "64" in k)
    assert failed[2] == "2.700" and failed[-1] == "1 complete, 0 partial, 1 failed" and "ValueError: boom" in md
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
