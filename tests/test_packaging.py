"""Packaging: every package folder is listed, the wheel carries attnlab.kernels."""

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _package_folders():
    found = set()
    for init in (ROOT / "src" / "attnlab").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT / "src").parts))
    for init in (ROOT / "kernels").rglob("__init__.py"):
        found.add(".".join(("attnlab", "kernels", *init.parent.relative_to(ROOT / "kernels").parts)))
    return found


def test_every_package_folder_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    missing = _package_folders() - listed
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    assert cfg["package-dir"] == {"attnlab": "src/attnlab", "attnlab.kernels": "kernels"}


def test_nothing_imports_a_bare_top_level_kernels():
    bad = re.compile(r"^\s*(from kernels[ .]|import kernels\b)", re.M)
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("src", "tests", "experiments", "kernels")
        for p in (ROOT / folder).rglob("*.py")
        if bad.search(p.read_text())
    ]
    assert not offenders, f"import attnlab.kernels instead: {offenders}"


def test_kernels_never_import_attnlab():
    bad = re.compile(r"^\s*(from attnlab|import attnlab)", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "kernels").rglob("*.py") if bad.search(p.read_text())]
    assert not offenders, f"kernels/ must not import attnlab: {offenders}"


def test_wheel_contains_kernels(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("attnlab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "attnlab/kernels/__init__.py" in names
    assert "attnlab/kernels/flash/__init__.py" in names
    assert "attnlab/attention/spec.py" in names
