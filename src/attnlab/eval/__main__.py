"""The Hydra entry point of `python -m attnlab.eval` (conf/eval.yaml; see `attnlab.eval`)."""

from __future__ import annotations

import json


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from attnlab.errors import hydra_cli, user_errors
    from attnlab.eval.run import execute, make_plan, summary
    from attnlab.paths import CONF_DIR

    @hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
    def run(cfg: DictConfig) -> None:
        with user_errors():  # bad options, a source that cannot be loaded: one line, status 2
            c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
            plan = make_plan(c)
        record = execute(plan)
        print(json.dumps(record, indent=2))
        for line in summary(record):
            print(line)
        if not c.get("out") and not c.get("out_dir"):
            print("(out=<file> writes the record; out_dir=<folder> writes eval.json and the figures)")

    hydra_cli(run)()


if __name__ == "__main__":
    main()
