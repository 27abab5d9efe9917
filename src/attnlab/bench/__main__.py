"""`python -m attnlab.bench [key=value ...] [bench=<preset>]`: the Hydra entry point.

Composes conf/bench.yaml (repo root), runs the grid, writes results.csv, results.md,
plot.png and env.json into the Hydra run dir and prints the markdown table. Hydra stops
here: the library (`attnlab.bench.harness`, `report`, `env`) takes a plain `BenchConfig`.

    python -m attnlab.bench                                   # CPU-sized default grid
    python -m attnlab.bench impls=[sdpa,flex] seq_lens=[1024,2048] dtypes=[bfloat16]
    python -m attnlab.bench bench=smoke hydra.run.dir=/tmp/bench

Bad input (a value, an unknown key or preset) prints one line ``error: ...`` naming the key
and exits with status 2, before anything is timed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from attnlab.bench.config import BenchConfig
from attnlab.bench.env import environment
from attnlab.bench.harness import run_benchmark
from attnlab.bench.report import markdown, write_csv, write_env, write_plot
from attnlab.errors import UserInputError, hydra_cli, user_errors
from attnlab.paths import CONF_DIR


@hydra.main(config_path=str(CONF_DIR), config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():  # a bad value or an unwritable run dir: one line, status 2
        bench_cfg = BenchConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserInputError(f"hydra.run.dir={str(out_dir)!r} cannot be created: {err.strerror or err}") from err

    device = bench_cfg.resolved_device()
    env = environment(device)
    print(f"attnlab.bench on {env['device_name']} ({device}); writing to {out_dir}", file=sys.stderr)
    baselines = bench_cfg.ratio_baselines
    write_env(env, out_dir / "env.json")
    so_far: list = []

    def save(rows):  # after every case, so a run stopped part-way keeps what it measured
        so_far[:] = rows
        write_csv(rows, out_dir / "results.csv", baselines)

    try:
        rows = run_benchmark(bench_cfg, log=lambda line: print(line, file=sys.stderr, flush=True), on_row=save)
    except KeyboardInterrupt:  # Ctrl-C or a time limit (SIGINT): report the cases measured so far
        total = bench_cfg.num_cases
        print(f"interrupted after {len(so_far)} of {total} cases; reporting those", file=sys.stderr)
        _report(bench_cfg, list(so_far), env, out_dir, note=f"Interrupted: {len(so_far)} of {total} cases ran.")
        raise SystemExit(130) from None
    _report(bench_cfg, rows, env, out_dir)


def _report(bench_cfg: BenchConfig, rows: list, env: dict, out_dir: Path, note: str = "") -> None:
    """Write results.csv, results.md, plot.png (env.json is written first) and print the table."""
    baselines = bench_cfg.ratio_baselines
    table = (note + "\n\n" if note else "") + markdown(rows, baselines, env)
    paths = [write_csv(rows, out_dir / "results.csv", baselines), out_dir / "results.md", out_dir / "env.json"]
    (out_dir / "results.md").write_text(table)
    if bench_cfg.plot and rows:
        plot = write_plot(rows, out_dir / "plot.png")
        if plot is not None:
            paths.append(plot)
    print(table)
    print("wrote: " + ", ".join(str(p) for p in paths))


def cli() -> None:
    """``python -m attnlab.bench``: Hydra's own errors (an unknown key, a preset that does not
    exist) as one line ``error: ...`` and status 2, like bad values."""
    hydra_cli(main)()


if __name__ == "__main__":
    cli()
