"""Run dirs: one writer at a time, and reruns that never destroy a run.

A job holds ``<run_dir>/.lock`` (``fcntl.flock``; the file names the holder's pid and host)
while it writes the run dir. A second writer is refused at once (`RunDirLocked`), with the
holder's pid and host. Under torchrun rank 0 holds the lock for every rank.

What a job does with what the run dir already holds (``resume=``):

| the run dir holds                      | auto (default)          | true                   | false        | force      |
|----------------------------------------|-------------------------|------------------------|--------------|------------|
| no run (empty, or a start that failed) | start                   | start                  | start        | start      |
| a complete run of this config          | skip                    | skip                   | skip         | start over |
| an unfinished run of this config       | continue                | continue               | refuse       | start over |
| a run of another config                | refuse, naming the keys | continue (its ckpt)    | refuse       | start over |

"Unfinished" runs continue from their latest checkpoint; one killed before its first
checkpoint has nothing to lose and starts again. A refusal (`RunDirConflict`) touches
nothing and says how to go on: another run dir, or ``resume=force`` to start over on purpose
(which removes the job's outputs: `RUN_OUTPUTS`).

"This config": the same config hash (`config_hash`) or, for runs hashed another way, no
differing key. Both cover the keys that change results: every key of the record but
`NOT_RESULT_KEYS` (logging, progress, checkpoint cadence, cache folders), `NEUTRAL_DEFAULTS`
at their defaults, and ``train.lora`` unless ``train.trainable`` names lora.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from attnlab.errors import UserInputError
from attnlab.train import checkpoint as ckpt
from attnlab.train.distributed import Dist

#: Keys (dotted paths into the config record) that do not change a run's results.
NOT_RESULT_KEYS = (
    "resume", "config_hash",
    "train.logger", "train.wandb_mode", "train.wandb_project", "train.wandb_group", "train.progress",
    "train.log_every", "train.ckpt_every", "train.stop_at",
    "data.cache_dir", "distill.cache_dir", "init_source",
)
#: Keys left out of the hash while they hold these values: options added after runs existed,
#: whose default is what every older run did (so adding them changes no run's identity).
NEUTRAL_DEFAULTS = {"init": None, "train.trainable": "all"}
#: What `resume=force` removes before starting over (the jobs' outputs; config.json is rewritten).
RUN_OUTPUTS = ("checkpoints", "metrics.json", "metrics.jsonl", "error.txt", "init_eval.json", "scratch",
               "scratch_metrics.json", "wandb_id.txt")
RESUME_MODES = (False, True, "auto", "force")
LOCK = ".lock"


class RunDirError(UserInputError):
    """A run dir that this job may not write (a user error: the message says what to do)."""


class RunDirLocked(RunDirError):
    """Another job holds the run dir's lock."""


class RunDirConflict(RunDirError):
    """The run dir holds a run that this job would destroy."""


# ---------------------------------------------------------------------- config identity
def train_keys_not_results() -> set[str]:
    """The `TrainConfig` fields among `NOT_RESULT_KEYS`."""
    return {k.split(".", 1)[1] for k in NOT_RESULT_KEYS if k.startswith("train.")}


def _flat(record: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if any(key == e or key.startswith(e + ".") for e in NOT_RESULT_KEYS):
            continue
        out.update(_flat(v, key + ".") if isinstance(v, dict) and v else {key: v})
    return out


def _result_keys(record: dict) -> dict:
    flat = _flat(json.loads(json.dumps(record, default=str)))  # tuples -> lists, as config.json has them
    for key, neutral in NEUTRAL_DEFAULTS.items():
        if key in flat and flat[key] in (neutral, [neutral]):
            del flat[key]
    trainable = flat.get("train.trainable", "all")
    if "lora" not in ([trainable] if isinstance(trainable, str) else trainable):  # train.lora is unused
        flat = {k: v for k, v in flat.items() if not k.startswith("train.lora.")}
    return flat


def config_hash(record: dict) -> str:
    """Identity of a run's results: a hash of every key but `NOT_RESULT_KEYS`."""
    body = json.dumps(_result_keys(record), sort_keys=True)
    return hashlib.sha1(body.encode()).hexdigest()[:16]


def config_diff(old: dict, new: dict, limit: int = 6) -> list[str]:
    """``["train.lr: 0.001 -> 0.002", ...]``: the result keys whose values differ."""
    a, b = _result_keys(old), _result_keys(new)
    missing = "(absent)"
    out = [f"{k}: {json.dumps(a.get(k, missing))} -> {json.dumps(b.get(k, missing))}"
           for k in sorted(a.keys() | b.keys()) if a.get(k, missing) != b.get(k, missing)]
    return out if len(out) <= limit else [*out[:limit], f"and {len(out) - limit} more"]


def record_of(config_record: dict | None, **sections) -> dict:
    """A job's record: ``config_record`` (e.g. the Hydra config) with each dataclass section."""
    return dict(config_record or {}, **{k: asdict(v) if hasattr(v, "__dataclass_fields__") else v
                                        for k, v in sections.items()})


def parse_resume(value) -> bool | str:
    if isinstance(value, bool) or value in ("auto", "force"):
        return value
    raise ValueError(f"resume={value!r} must be true, false, auto or force")


# ---------------------------------------------------------------------- lock
_HELD: dict[str, int] = {}  # run dirs this process holds (re-entrant: a CLI and the job it calls)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        info = {}
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"


@contextmanager
def _flock(run_dir: Path):
    key = os.path.realpath(run_dir)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirLocked(f"{run_dir} is being written by another job ({_holder(run_dir / LOCK)}): wait for it "
                           "to finish or use another run dir") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        _HELD[key] = 1
        yield
    finally:
        _HELD.pop(key, None)
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def locked(run_dir: str | os.PathLike, dist: Dist | None = None):
    """Hold ``run_dir``'s lock for the block (rank 0 for all ranks); refused: `RunDirLocked`
    on every rank. Re-entrant within a process."""
    dist = dist or Dist()
    with ExitStack() as stack:
        error = None
        if dist.is_main:
            try:
                stack.enter_context(_flock(Path(run_dir)))
            except RunDirLocked as err:
                error = str(err)
        error = dist.broadcast_object(error)
        if error:
            raise RunDirLocked(error)
        yield


# ---------------------------------------------------------------------- what a rerun does
@dataclass
class Plan:
    resume: bool = False       # continue from the latest checkpoint
    done: dict | None = None   # the saved metrics of a complete run of this config: nothing to do
    note: str | None = None    # what was decided, for stderr


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def holds_run(run_dir: Path) -> bool:
    """A checkpoint, final metrics or logged records: something a fresh start would lose."""
    log = run_dir / "metrics.jsonl"
    return ((run_dir / "metrics.json").exists() or (log.is_file() and log.stat().st_size > 0)
            or any(ckpt.latest_in(run_dir / "checkpoints", s) for s in (False, True)))


def plan(run_dir: Path, record: dict, resume: bool | str, sharded: bool) -> Plan:
    """What this job does in ``run_dir`` (table in the module docstring); raises
    `RunDirConflict`. Reads files only."""
    resume = parse_resume(resume)
    if resume == "force" or not holds_run(run_dir):
        note = f"resume=force: starting {run_dir} over" if resume == "force" and holds_run(run_dir) else None
        return Plan(note=note)
    metrics = _read_json(run_dir / "metrics.json") or {}
    complete = metrics.get("status") == "complete"
    found = ckpt.latest_in(run_dir / "checkpoints", sharded) or ckpt.latest_in(run_dir / "checkpoints", not sharded)
    meta, unreadable = {}, None
    if found is not None:
        try:
            meta = ckpt.read_meta(found)
        except Exception as err:  # noqa: BLE001 - any failure to read means: cannot continue it
            unreadable = f"{type(err).__name__}: {err}".splitlines()[0]
    old = _read_json(run_dir / "config.json") or meta.get("config")
    old_hash = metrics.get("config_hash") if complete else (meta.get("config") or old or {}).get("config_hash")
    same = old_hash == record["config_hash"] or (old is not None and not config_diff(old, record))
    what = "a complete run" if complete else (f"an unfinished run (checkpoint at step {meta['step']})" if meta
                                               else "an unfinished run")
    if complete and same:
        return Plan(done=metrics, note=f"skip: {run_dir} already holds a complete run of this config")
    how = "use another run dir, or resume=force to start over"
    if unreadable:
        raise RunDirConflict(f"resume={_show(resume)}: {run_dir} holds a checkpoint that cannot be read ({found}: "
                             f"{unreadable}); it is kept: {how}")
    if same and found is None:
        return Plan()  # killed before its first checkpoint: the records are redone
    if same and resume != False:  # noqa: E712 - resume is True or "auto"
        return Plan(resume=True, note=f"resume={_show(resume)}: continuing {run_dir} from step {meta['step']} "
                                      f"(config {record['config_hash']})")
    if not same and resume is True and found is not None:
        return Plan(resume=True, note=f"resume=true: continuing {run_dir} from step {meta['step']} with another "
                                      f"config ({_why(old, old_hash, record)})")
    if same:
        raise RunDirConflict(f"resume=false: {run_dir} holds {what} of this config; it is kept: resume=auto "
                             f"continues it, resume=force starts over")
    more = ", resume=true to continue it with this config" if found is not None and not complete else ""
    raise RunDirConflict(f"resume={_show(resume)}: {run_dir} holds {what} of another config "
                         f"({_why(old, old_hash, record)}); it is kept: use another run dir{more}, or resume=force "
                         "to start over")


def _show(resume) -> str:
    return str(resume).lower()


def _why(old: dict | None, old_hash, record: dict) -> str:
    diff = config_diff(old, record) if old is not None else []
    return "; ".join(diff) if diff else f"config hash {old_hash} -> {record['config_hash']}"


def start(run_dir: Path, record: dict, resume: bool | str, dist: Dist | None = None, sharded: bool = False) -> Plan:
    """Under `locked`: decide (`plan`, on rank 0, for every rank) and, when the job is to run,
    start over if asked (`RUN_OUTPUTS` removed), remove a stale error.txt and write
    config.json. Sets ``record["config_hash"]`` when missing. Raises `RunDirConflict`."""
    dist = dist or Dist()
    record.setdefault("config_hash", config_hash(record))
    decided, error = None, None
    if dist.is_main:
        try:
            decided = plan(run_dir, record, resume, sharded)
        except RunDirConflict as err:
            error = str(err)
    decided, error = dist.broadcast_object((decided, error))
    if error:
        raise RunDirConflict(error)
    if dist.is_main:
        if decided.note:
            print(decided.note, file=sys.stderr)
        if decided.done is None:
            if resume == "force":
                for name in RUN_OUTPUTS:
                    path = run_dir / name
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            (run_dir / "error.txt").unlink(missing_ok=True)
            write_record(run_dir, record)
    dist.barrier()
    return decided


def write_record(run_dir: Path, record: dict) -> None:
    ckpt.atomic_write_text(json.dumps(record, indent=2, default=str), run_dir / "config.json")


def record_start(run_dir: Path, record: dict, dist: Dist | None = None) -> None:
    """config.json of a job that starts in a dir holding no run, before anything can fail
    (a failed run is still a run); a dir holding a run is left for `start` to decide."""
    if (dist or Dist()).is_main and not holds_run(run_dir):
        write_record(run_dir, dict(record, config_hash=record.get("config_hash") or config_hash(record)))
