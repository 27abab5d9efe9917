"""The README starts with the two commands and carries the generated attention table."""

from pathlib import Path

from attnlab.attention.table import impl_table

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_starts_with_the_two_commands():
    blocks = README.split("```")
    first_block = blocks[1].strip().splitlines()[1:]  # drop the language tag
    commands = [line for line in first_block if line and not line.startswith("#")]
    assert commands[:2] == ["make demo", "make test"]


def test_readme_attention_table_is_current():
    assert impl_table() in README, "regenerate with `make table` (python -m attnlab.attention)"
