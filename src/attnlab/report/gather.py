"""Find the runs under a sweep (or any) directory and read what each one left behind.

A run dir is any folder holding ``config.json`` (written by the training job when it
starts). Status: ``complete`` (metrics.json says so), ``failed`` (an ``error.txt``, or a
config.json / metrics.json / overrides.yaml that cannot be read: the error names the file),
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
    config: dict = field(default_factory=dict)


def _read_json(path: Path) -> tuple[dict | None, str]:
    """(the JSON object in ``path``, "") or (None, why it cannot be read, naming the file)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"unreadable {path.name} ({path}): {err}"
    if not isinstance(value, dict):
        return None, f"unreadable {path.name} ({path}): a JSON object expected, got {type(value).__name__}"
    return value, ""


def _overrides(run_dir: Path) -> tuple[list[str], str]:
    """(the run's Hydra overrides without ``hydra.*``, "") or ([], why overrides.yaml cannot be read)."""
    f = run_dir / ".hydra" / "overrides.yaml"
    if not f.exists():
        return [], ""
    try:
        items = yaml.safe_load(f.read_text()) or []
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return [], f"unreadable overrides.yaml ({f}): {str(err).splitlines()[0]}"
    if not isinstance(items, list):
        return [], f"unreadable overrides.yaml ({f}): a list expected, got {type(items).__name__}"
    return [str(o) for o in items if not str(o).startswith("hydra.")], ""


def _seed_from_overrides(overrides: list[str]) -> int | None:
    for o in overrides:
        if _key(o) == "train.seed":
            try:
                return int(o.split("=", 1)[1])
            except ValueError:
                return None
    return None


def _key(override: str) -> str:
    return override.split("=")[0].lstrip("+~")


def _label(overrides: list[str], config: dict) -> str:
    kept = [o for o in overrides if _key(o) not in SEED_KEYS]
    if kept:
        return " ".join(kept)
    model = config.get("model")
    model = model if isinstance(model, dict) else {}
    return f"d{model.get('d_model')}x{model.get('n_layers')} " + ",".join(sorted(set(model.get("layer_pattern", []))))


def _malformed(config: dict) -> str:
    """Why a config.json that parses is still not a run's record ("" when it is): the parts the
    report reads (sections, train.seed, model.layer_pattern) have the wrong type."""
    for section in ("model", "data", "train"):
        if section in config and not isinstance(config[section], dict):
            return f"{section} is {type(config[section]).__name__} {config[section]!r:.40}, not an object"
    seed = (config.get("train") or {}).get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        return f"train.seed={seed!r:.40} is not an int"
    pattern = (config.get("model") or {}).get("layer_pattern")
    if pattern is not None and (not isinstance(pattern, list) or not all(isinstance(p, str) for p in pattern)):
        return f"model.layer_pattern={pattern!r:.60} is not a list of names"
    return ""


def read_run(run_dir: Path) -> Run:
    """What one run dir holds. Never raises for a broken file: the run is ``failed`` and its
    error names the file (a truncated config.json must not stop the report of a sweep)."""
    overrides, overrides_error = _overrides(run_dir)
    config, config_error = _read_json(run_dir / "config.json")
    if config is not None and (why := _malformed(config)):
        config, config_error = None, f"malformed config.json ({run_dir / 'config.json'}): {why}"
    if config is None:  # the label and seed come from the overrides, if any
        label = " ".join(o for o in overrides if _key(o) not in SEED_KEYS) or run_dir.name
        return Run(run_dir, "failed", label, _seed_from_overrides(overrides), error=config_error,
                   overrides=overrides)
    train = config.get("train")
    seed = train.get("seed") if isinstance(train, dict) else None
    label = _label(overrides, config)
    metrics_file, error_file = run_dir / "metrics.json", run_dir / "error.txt"
    run = Run(run_dir, "partial", label, seed, overrides=overrides, config=config)
    if error_file.exists():
        lines = error_file.read_text(errors="replace").strip().splitlines() or ["(empty error.txt)"]
        last = "".join(ch if ch.isprintable() else "?" for ch in lines[-1])  # a binary file: no control bytes
        run.status, run.error = "failed", last[:300]
    elif overrides_error:
        run.status, run.error = "failed", overrides_error
    elif metrics_file.exists():
        metrics, metrics_error = _read_json(metrics_file)
        if metrics is None:
            run.status, run.error = "failed", metrics_error
        elif metrics.get("status") == "complete":
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


def _read_or_fail(run_dir: Path) -> Run:
    """`read_run`, and a ``failed`` row naming the run dir if reading it still goes wrong (an
    error.txt that is a folder, a file without read permission...): one broken run never stops
    the report of the others."""
    try:
        return read_run(run_dir)
    except Exception as err:
        return Run(run_dir, "failed", run_dir.name, None,
                   error=f"unreadable run dir ({run_dir}): {type(err).__name__}: {err}")


def gather_runs(root) -> list[Run]:
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"sweep dir {root} does not exist or is not a folder")
    runs = [_read_or_fail(p.parent) for p in sorted(root.rglob("config.json"))]
    if not runs:
        raise ValueError(f"no runs under {root} (a run dir holds config.json, written when training starts)")
    _shorten_labels(runs)
    return runs
