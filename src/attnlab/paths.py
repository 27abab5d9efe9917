"""Where the repository's Hydra configs live (entry points run from a source checkout)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # src/attnlab/paths.py -> repo
CONF_DIR = REPO_ROOT / "conf"
