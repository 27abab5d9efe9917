"""Config sections (plain dicts from YAML) -> validated dataclasses, with errors naming keys."""

from __future__ import annotations

from dataclasses import fields


def from_dict(cls, d: dict | None, section: str):
    """`cls(**d)` that rejects unknown keys by name (`section.key`) instead of a TypeError."""
    d = dict(d or {})
    known = [f.name for f in fields(cls) if f.init]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(
            f"{section}: unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; allowed: {', '.join(known)}"
        )
    return cls(**d)
