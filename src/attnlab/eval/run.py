"""The evaluation job without Hydra: options (a plain dict, conf/eval.yaml's keys) -> a plan
(everything validated, the model loaded, inputs built) -> one JSON record with a section per
task, figures beside it.

Bad options fail in `make_plan`, before any forward pass, with a ``ValueError`` naming the key
and value, a source that cannot be loaded with `attnlab.errors.UserInputError` (the CLI prints
either as one line ``error: ...`` and exits 2).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from attnlab.data import data_config_from_dict
from attnlab.data.recall import TaskConfig
from attnlab.eval.bpb import (
    bpb_by_position,
    check_windows,
    describe_layers,
    evaluate_bpb,
    val_corpus,
    with_attention,
)
from attnlab.eval.passkey import build_prompts, check_options, passkey_zero_shot
from attnlab.eval.plots import plot_accuracy_by_distance, plot_bpb_by_position
from attnlab.eval.recall import evaluate_recall, task_config

TASKS = ("bpb", "bpb_by_position", "passkey", "mqar", "copy")


@dataclass
class Plan:
    """A validated evaluation: the loaded model and one runner per task (in order)."""

    pre: object
    options: dict
    jobs: list[tuple[str, Callable[[], dict]]] = field(default_factory=list)


def parse_tasks(value) -> tuple[str, ...]:
    tasks = (value,) if isinstance(value, str) else value
    if not isinstance(tasks, list | tuple) or not tasks:
        raise ValueError(f"tasks={value!r} is not allowed: a non-empty list from {', '.join(TASKS)}")
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"tasks={list(tasks)!r}: unknown task {t!r}; allowed: {', '.join(TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks={list(tasks)!r}: a task is listed twice")
    return tuple(tasks)


def check_outputs(out, out_dir) -> None:
    """``out`` (a file) and ``out_dir`` (a folder) must not be the other kind of thing: found
    now, not after the tasks ran."""
    if out is not None and (not isinstance(out, str) or not out or Path(out).is_dir()):
        raise ValueError(f"out={out!r} is not allowed: a file path for the JSON record (not a folder), or null")
    if out_dir is not None and (not isinstance(out_dir, str) or not out_dir or Path(out_dir).is_file()):
        raise ValueError(f"out_dir={out_dir!r} is not allowed: a folder path (not a file), or null")
    for key, path in (("out", out), ("out_dir", out_dir)):
        parent = next((p for p in Path(path).absolute().parents if p.exists()), None) if path else None
        if parent is not None and not parent.is_dir():
            raise ValueError(f"{key}={path!r} is not allowed: {parent} is a file, not a folder")


def _trained_on(pre) -> str:
    return f"the recall task data.name={pre.data.name!r}" if isinstance(pre.data, TaskConfig) else "text"


def make_plan(c: dict, load: Callable | None = None) -> Plan:
    """Validate ``c`` (conf/eval.yaml's keys), load the model and build each task's inputs."""
    from attnlab.pretrained.sources import check_attn_impl, check_source_given, load_source

    check_source_given("source", c.get("source"))
    tasks = parse_tasks(c.get("tasks", ["bpb"]))
    attn_impl = check_attn_impl("attn_impl", c.get("attn_impl"))
    check_outputs(c.get("out"), c.get("out_dir"))
    windows, batch_size, device = c.get("windows"), c.get("batch_size", 1), c.get("device", "auto")
    check_windows(windows, batch_size)
    pk = dict(c.get("passkey") or {})
    unknown = sorted(set(pk) - {"distances", "samples", "digits", "seed", "context"})
    if unknown:
        raise ValueError(f"passkey.{unknown[0]}: unknown key; allowed: context, digits, distances, samples, seed")
    if "passkey" in tasks:
        check_options(pk.get("distances"), pk.get("samples"), pk.get("digits"), pk.get("seed"), pk.get("context"))
    data_cfg = data_config_from_dict(c.get("data"), "data")
    override = c.get("model") or {}
    bad = sorted(set(override) - {"attention", "layer_pattern"})
    if bad:
        raise ValueError(f"eval: model.{bad[0]} cannot be changed; only model.attention and "
                         "model.layer_pattern (e.g. +attention=swa32) can")
    need = max(data_cfg.context, (pk.get("context") or 0) if "passkey" in tasks else 0)  # sizes a GGUF's RoPE
    pre = load_source(c["source"], "source", load=load, attn_impl=attn_impl, cache_dir=data_cfg.resolved_cache_dir(),
                      needed_context=need)
    if override:
        pre = with_attention(pre, override.get("attention", pre.config.attention),
                             override.get("layer_pattern", pre.config.layer_pattern))
    plan = Plan(pre, c)
    corpus = None
    for task in tasks:
        if task in ("bpb", "bpb_by_position"):
            if isinstance(pre.data, TaskConfig):
                raise ValueError(f"tasks={task} does not fit source={pre.source}: it was trained on "
                                 f"{_trained_on(pre)} (token ids, no text); use tasks=[{pre.data.name}]")
            corpus = corpus or val_corpus(pre, data_cfg, windows, batch_size)
            fn = evaluate_bpb if task == "bpb" else bpb_by_position
            plan.jobs.append((task, lambda fn=fn, corpus=corpus: fn(pre, data_cfg, windows, batch_size, device,
                                                                    corpus=corpus)))
        elif task == "passkey" and isinstance(pre.data, TaskConfig):
            cfg = task_config(pre, "passkey", c.get("task"))  # a run trained on data=passkey: its own task
            plan.jobs.append((task, lambda cfg=cfg: evaluate_recall(pre, cfg, device)))
        elif task == "passkey":
            prompts = build_prompts(pre.tokenizer, pk["distances"], pk["samples"], pk["digits"], pk["seed"],
                                    pk.get("context"), pre.config.context + 1)
            plan.jobs.append((task, lambda prompts=prompts: passkey_zero_shot(
                pre, pk["distances"], pk["samples"], pk["digits"], pk["seed"], pk.get("context"), batch_size,
                device, prompts=prompts)))
        else:
            cfg = task_config(pre, task, c.get("task"))
            plan.jobs.append((task, lambda cfg=cfg: evaluate_recall(pre, cfg, device)))
    return plan


def execute(plan: Plan) -> dict:
    """Run the plan's tasks; write the JSON to ``out`` and ``out_dir/eval.json`` (first, so a
    figure that fails loses no numbers), then the figures into ``out_dir``. Returns the record."""
    from attnlab.data.cache import atomic_write_bytes
    from attnlab.model import num_params

    pre, c = plan.pre, plan.options
    record = {"source": pre.source, "kind": pre.kind, "params": num_params(pre.model),
              "attention": describe_layers(pre), "tasks": [name for name, _ in plan.jobs]}
    for name, job in plan.jobs:
        record[name] = job()
    out_dir = Path(c["out_dir"]) if c.get("out_dir") else None
    plotted = [name for name in record["tasks"] if name != "bpb"]
    if out_dir is not None:
        record["figures"] = {name: str(out_dir / f"{name}.png") for name in plotted}
    text = json.dumps(record, indent=2) + "\n"
    if c.get("out"):
        atomic_write_bytes(Path(c["out"]), text.encode())
    if out_dir is not None:
        atomic_write_bytes(out_dir / "eval.json", text.encode())
        title = Path(str(pre.source)).name or str(pre.source)
        for name in plotted:
            if name == "bpb_by_position":
                plot_bpb_by_position(record[name], out_dir / f"{name}.png", f"{title}: bits per byte by position")
            else:
                plot_accuracy_by_distance(record[name], out_dir / f"{name}.png", f"{title}: {name}")
    return record


def summary(record: dict) -> list[str]:
    """One line per task, for the terminal."""
    lines = []
    src = record["source"]
    for name in record["tasks"]:
        s = record[name]
        if name == "bpb":
            lines.append(f"{src}: val bpb {s['val_bpb']:.4f} over {s['windows']} of {s['windows_total']} windows of "
                         f"{s['context']} tokens ({s['bytes']:,} bytes)")
        elif name == "bpb_by_position":
            parts = ", ".join(f"{b['positions'][0]}-{b['positions'][1]}: {b['bpb']:.3f}"
                              for b in s["buckets"] if b["bpb"] is not None)
            lines.append(f"{src}: bpb by position ({s['windows']} windows) {parts}")
        else:
            acc = s.get("accuracy_by_distance") or s.get("val_accuracy_by_distance")
            overall = s.get("accuracy", s.get("val_accuracy"))
            what = (f"{s['samples']} prompts per distance of {s['prompt_tokens']} tokens"
                    if s["mode"] == "zero_shot" else f"{s['val_answers']} answers")
            lines.append(f"{src}: {name} accuracy {overall:.3f} ({what}); by distance "
                         + ", ".join(f"{d}: {a:.2f}" for d, a in acc.items()))
    return lines
