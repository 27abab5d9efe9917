"""The Hydra entry point of `python -m attnlab.eval` (conf/eval.yaml; see `attnlab.eval`)."""

from __future__ import annotations

import json
import sys


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from attnlab.eval.run import execute, make_plan, summary
    from attnlab.paths import CONF_DIR

    @hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
    def run(cfg: DictConfig) -> None:
        c = OmegaConf.to_container(cfg, resolve=True)
        try:
            plan = make_plan(c)
        except (ValueError, FileNotFoundError) as err:
            print("error: " + " ".join(str(err).splitlines()), file=sys.stderr)  # one line
            sys.exit(2)
        record = execute(plan)
        print(json.dumps(record, indent=2))
        for line in summary(record):
            print(line)
        if not c.get("out") and not c.get("out_dir"):
            print("(out=<file> writes the record; out_dir=<folder> writes eval.json and the figures)")

    run()


if __name__ == "__main__":
    main()
