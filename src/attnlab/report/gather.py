"""Find the runs under a sweep (or any) directory and read what each one left behind.

A run dir is any folder holding ``config.json`` (written by the training job when it
starts). Status: ``complete`` (metrics.json says so), ``failed`` (an ``error.txt``),
``partial`` (started, no final metrics: still running, interrupted, or stopped early).
The run's label is its Hydra overrides (``.hydra/overrides.yaml``) without seeds, so runs
that differ only by seed group together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SEED_KEYS = ("train.seed", "data.seed", "seed")


@dataclass
class Run:
    path: Path
    status: str
    label: str
    seed: int | None
    metrics: dict = field(default_factory=dict)
    error: str = ""
    overrides: list[str] = field(default_factory=list)


def _overrides(run_dir: Path) -> list[str]:
    f = run_dir / ".hydra" / "overrides.yaml"
    if not f.exists():
        return []
    items = yaml.safe_load(f.read_text()) or []
    return [o for o in items if not o.startswith("hydra.")]


def _key(override: str) -> str:
    return override.split("=")[0].lstrip("+~")


def _label(overrides: list[str], config: dict) -> str:
    kept = [o for o in overrides if _key(o) not in SEED_KEYS]
    if kept:
        return " ".join(kept)
    model = config.get("model", {})
    return f"d{model.get('d_model')}x{model.get('n_layers')} " + ",".join(sorted(set(model.get("layer_pattern", []))))


def read_run(run_dir: Path) -> Run:
    config = json.loads((run_dir / "config.json").read_text())
    seed = config.get("train", {}).get("seed")
    overrides = _overrides(run_dir)
    label = _label(overrides, config)
    metrics_file, error_file = run_dir / "metrics.json", run_dir / "error.txt"
    run = Run(run_dir, "partial", label, seed, overrides=overrides)
    if error_file.exists():
        lines = error_file.read_text().strip().splitlines() or ["(empty error.txt)"]
        run.status, run.error = "failed", lines[-1][:300]
    elif metrics_file.exists():
        try:
            metrics = json.loads(metrics_file.read_text())
        except json.JSONDecodeError as err:
            run.status, run.error = "failed", f"unreadable metrics.json: {err}"
        else:
            if metrics.get("status") == "complete":
                run.status, run.metrics = "complete", metrics
    return run


def _shorten_labels(runs: list[Run]) -> None:
    """Keep only the overrides whose values differ between runs (the sweep's axes)."""
    def value(run: Run, key: str) -> str | None:
        return next((o for o in run.overrides if _key(o) == key), None)

    keys = {_key(o) for run in runs for o in run.overrides}
    varying = {k for k in keys if len({value(run, k) for run in runs}) > 1}
    for run in runs:
        kept = [o for o in run.overrides if _key(o) in varying and _key(o) not in SEED_KEYS]
        if kept:
            run.label = " ".join(sorted(kept))  # the same label whatever order the overrides came in


def gather_runs(root) -> list[Run]:
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"sweep dir {root} does not exist or is not a folder")
    runs = [read_run(p.parent) for p in sorted(root.rglob("config.json"))]
    if not runs:
        raise ValueError(f"no runs under {root} (a run dir holds config.json, written when training starts)")
    _shorten_labels(runs)
    return runs
