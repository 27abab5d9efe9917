"""The count-based n-gram floor beside a language-model sweep (DESIGN.md, "Results that hold":
a model worse than the 5-gram on the same validation windows makes no attention claim).

`floor_references(runs)` rebuilds each distinct ``DataConfig`` of the sweep's complete LM runs
from config.json and asks `attnlab.data.ngram.ngram_floor` (imported lazily: the report works
without it) for bits per byte per order. Fields that do not change the validation windows
(``IGNORED_DATA_KEYS``) are left out when telling data configs apart.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass, field

from attnlab.report.tables import TASK_NAMES

ORDERS = (3, 5)  # the reference rows; the flag compares against the highest
IGNORED_DATA_KEYS = ("seed", "batch_size", "pack_documents", "cache_dir")  # same val windows whatever they are
SUB_FLOOR_NOTE = "worse than the {k}-gram floor: no attention claim"


@dataclass
class FloorReference:
    """The floor of one data config: ``bpb[order]``, the labels whose runs used that config, and
    ``name``: what tells this config apart from the sweep's others ("" when there is one)."""

    bpb: dict[int, float]
    labels: set[str] = field(default_factory=set)
    name: str = ""


def _data_key(data: dict) -> str:
    return json.dumps({k: v for k, v in data.items() if k not in IGNORED_DATA_KEYS}, sort_keys=True, default=str)


def _load_ngram_floor():
    module = importlib.import_module("attnlab.data.ngram")
    return module.ngram_floor


def _differences(datas: dict[str, dict]) -> dict[str, str]:
    """data key -> ``data.context=128 data.val_tokens=4096``: the fields that differ between configs."""
    keys = sorted({k for d in datas.values() for k in d if k not in IGNORED_DATA_KEYS})
    varying = [k for k in keys if len({json.dumps(d.get(k), default=str) for d in datas.values()}) > 1]
    return {dk: " ".join(f"data.{k}={d.get(k)}" for k in varying) for dk, d in datas.items()}


def floor_references(runs, orders=ORDERS) -> tuple[list[FloorReference], list[str]]:
    """(one FloorReference per distinct data config of the complete language-model runs, notes
    saying what was skipped and why). Never raises: a missing or failing ``ngram_floor`` is a note."""
    from attnlab.configs import from_dict
    from attnlab.data import DataConfig

    datas, labels = {}, {}
    for run in runs:
        data = run.config.get("data") if run.status == "complete" else None
        if not isinstance(data, dict) or data.get("name") in TASK_NAMES:
            continue
        key = _data_key(data)
        datas.setdefault(key, data)
        labels.setdefault(key, set()).add(run.label)
    if not datas:
        return [], ["n-gram floor: skipped, no complete language-model run with a `data` section in config.json"]
    try:
        ngram_floor = _load_ngram_floor()
    except Exception as err:  # the module is optional: say why and go on
        return [], [f"n-gram floor: skipped, attnlab.data.ngram is not usable ({type(err).__name__}: {err})"]
    names = _differences(datas) if len(datas) > 1 else dict.fromkeys(datas, "")
    refs, notes = [], []
    for key, data in datas.items():
        where = f" for {names[key]}" if names[key] else ""
        try:
            bpb = ngram_floor(from_dict(DataConfig, data, "data"), orders=tuple(orders))
            bpb = {int(k): float(v) for k, v in bpb.items() if math.isfinite(float(v))}
        except Exception as err:  # a failing floor must not stop the report
            notes.append(f"n-gram floor: skipped{where}, {type(err).__name__}: {err}")
            continue
        refs.append(FloorReference(bpb, labels[key], names[key]))
    return refs, notes


def reference_rows(refs: list[FloorReference], metric_key: str = "val_bpb") -> list[dict]:
    """Table rows ``n-gram floor, k-gram`` (one per order and data config), status ``reference``."""
    rows = []
    for ref in refs:
        for k, bpb in sorted(ref.bpb.items()):
            label = f"n-gram floor, {k}-gram" + (f" ({ref.name})" if ref.name else "")
            rows.append({"label": label, "runs": 0, "complete": 0, "partial": 0, "failed": 0, "seeds": "",
                         "errors": "", "by_seed": {}, "reference": True, "status_text": "reference",
                         metric_key: bpb, metric_key + "_std": math.nan})
    return rows


def sub_floor(rows, refs: list[FloorReference], metric_key: str = "val_bpb") -> dict[str, int]:
    """label -> k for each row whose mean ``metric_key`` is worse (higher) than the highest-order
    floor of its own data config."""
    flagged = {}
    for ref in refs:
        if not ref.bpb:
            continue
        k = max(ref.bpb)
        for row in rows:
            value = row.get(metric_key, math.nan)
            if row["label"] in ref.labels and not math.isnan(value) and value > ref.bpb[k]:
                flagged[row["label"]] = k
    return flagged
