"""AttentionSpec: validation, the masking semantics on hand-written cases, patterns, FLOPs."""

import pytest
import torch
from oracle import oracle_mask

from attnlab.attention import AttentionSpec


def M(rows):
    return torch.tensor(rows, dtype=torch.bool)[None]


# ----------------------------------------------------------------- hand-written semantics
def test_causal_square():
    assert torch.equal(AttentionSpec(causal=True).dense_mask(3, 3), M([[1, 0, 0], [1, 1, 0], [1, 1, 1]]))


def test_causal_bottom_right_when_fewer_queries():
    # 2 queries over 4 keys: queries sit at positions 2 and 3.
    assert torch.equal(AttentionSpec(causal=True).dense_mask(2, 4), M([[1, 1, 1, 0], [1, 1, 1, 1]]))


def test_causal_more_queries_than_keys_gives_empty_rows():
    # 4 queries over 2 keys: positions -2, -1, 0, 1; the first two see nothing.
    assert torch.equal(
        AttentionSpec(causal=True).dense_mask(4, 2), M([[0, 0], [0, 0], [1, 0], [1, 1]])
    )


def test_causal_int_window_is_w_most_recent_keys():
    m = AttentionSpec(kind="sliding_window", causal=True, window=2).dense_mask(4, 4)
    assert torch.equal(m, M([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]))


def test_window_one_is_diagonal():
    m = AttentionSpec(kind="sliding_window", causal=True, window=1).dense_mask(3, 3)
    assert torch.equal(m, torch.eye(3, dtype=torch.bool)[None])


def test_noncausal_int_window_is_symmetric():
    m = AttentionSpec(kind="sliding_window", window=2).dense_mask(4, 4)
    assert torch.equal(m, M([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]))


def test_pair_window_left_right():
    m = AttentionSpec(kind="sliding_window", window=(0, 1)).dense_mask(4, 4)
    assert torch.equal(m, M([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 1]]))
    m = AttentionSpec(kind="sliding_window", window=(1, 0)).dense_mask(3, 3)
    assert torch.equal(m, M([[1, 0, 0], [1, 1, 0], [0, 1, 1]]))


def test_pair_window_with_causal_cuts_the_right_side():
    m = AttentionSpec(kind="sliding_window", causal=True, window=(1, 2)).dense_mask(3, 3)
    assert torch.equal(m, M([[1, 0, 0], [1, 1, 0], [0, 1, 1]]))


def test_window_larger_than_sequence_equals_dense():
    swa = AttentionSpec(kind="sliding_window", causal=True, window=100).dense_mask(7, 7)
    assert torch.equal(swa, AttentionSpec(causal=True).dense_mask(7, 7))


@pytest.mark.parametrize("n_q,n_k", [(1, 1), (5, 9), (9, 5), (17, 17)])
@pytest.mark.parametrize(
    "kw",
    [
        dict(kind="dense"),
        dict(kind="dense", causal=True),
        dict(kind="sliding_window", window=3),
        dict(kind="sliding_window", window=3, causal=True),
        dict(kind="sliding_window", window=(2, 5)),
        dict(kind="sliding_window", window=(4, 1), causal=True),
        dict(kind="block_sparse", pattern="bigbird", block_size=4, causal=True),
        dict(kind="block_sparse", pattern="strided", block_size=2, window=(3, 3)),
    ],
)
def test_dense_mask_matches_rules(kw, n_q, n_k):
    spec = AttentionSpec(**kw)
    assert torch.equal(spec.dense_mask(n_q, n_k), oracle_mask(spec, n_q, n_k))


def test_block_sparse_layout_applies_inside_blocks():
    layout = torch.tensor([[[True, False], [True, True]]])
    spec = AttentionSpec(kind="block_sparse", block_size=2, layout=layout, causal=True)
    expected = M([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert torch.equal(spec.dense_mask(4, 4), expected)
    spec = AttentionSpec(kind="block_sparse", block_size=2, layout=torch.tensor([[[False, True], [True, False]]]))
    assert torch.equal(spec.dense_mask(4, 4), M([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]))


def test_ragged_last_block():
    layout = torch.tensor([[[True, False], [False, True]]])
    spec = AttentionSpec(kind="block_sparse", block_size=4, layout=layout)
    m = spec.dense_mask(6, 5)
    assert m.shape == (1, 6, 5)
    assert m[0, :4, :4].all() and not m[0, :4, 4:].any() and m[0, 4:, 4:].all()


# ----------------------------------------------------------------- patterns
@pytest.mark.parametrize("pattern", ["local", "strided", "bigbird", "longformer", "random"])
@pytest.mark.parametrize("causal", [False, True])
def test_patterns_cover_the_diagonal_and_respect_causality(pattern, causal):
    spec = AttentionSpec(kind="block_sparse", pattern=pattern, block_size=16, causal=causal)
    lay = spec.block_layout(256, 256)
    assert lay.dtype == torch.bool and lay.shape[1:] == (16, 16)
    assert torch.diagonal(lay, dim1=1, dim2=2).all(), "every query block sees its own block"
    mask = spec.dense_mask(256, 256)
    assert mask.any(-1).all(), "no empty rows when Nq == Nk"
    if causal:
        assert not torch.triu(mask, diagonal=1).any()
    density = spec.mask_density(256, 256)
    assert 0 < density <= 1


def test_local_band_width():
    lay = AttentionSpec(kind="block_sparse", pattern="local", local_blocks=2).block_layout(64 * 6, 64 * 6)[0]
    r, c = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    assert torch.equal(lay, (r - c).abs() < 2)


def test_strided_pattern_columns():
    lay = AttentionSpec(kind="block_sparse", pattern="strided", local_blocks=1, stride=3, causal=True).block_layout(
        64 * 7, 64 * 7
    )[0]
    assert lay[6].nonzero().flatten().tolist() == [0, 3, 6]


def test_global_blocks_see_and_are_seen():
    lay = AttentionSpec(kind="block_sparse", pattern="longformer", global_blocks=1, local_blocks=1).block_layout(
        64 * 5, 64 * 5
    )[0]
    assert lay[0].all() and lay[:, 0].all()
    assert not lay[3, 1]


def test_random_parts_are_seeded_and_per_head():
    kw = dict(kind="block_sparse", pattern="bigbird", block_size=16, random_blocks=3, heads=4)
    a = AttentionSpec(seed=1, **kw).block_layout(512, 512)
    b = AttentionSpec(seed=1, **kw).block_layout(512, 512)
    c = AttentionSpec(seed=2, **kw).block_layout(512, 512)
    assert a.shape[0] == 4 and torch.equal(a, b) and not torch.equal(a, c)
    assert not all(torch.equal(a[0], a[h]) for h in range(1, 4)), "heads draw different random blocks"


def test_random_density_is_roughly_right():
    spec = AttentionSpec(kind="block_sparse", pattern="random", density=0.25, block_size=16, seed=3)
    lay = spec.block_layout(16 * 64, 16 * 64)
    assert abs(lay.float().mean().item() - 0.25) < 0.05


def test_explicit_per_head_layout():
    lay = torch.zeros(2, 2, 2, dtype=torch.bool)
    lay[0, 0, 0] = lay[0, 1, 1] = True
    lay[1] = True
    spec = AttentionSpec(kind="block_sparse", block_size=2, layout=lay)
    m = spec.dense_mask(4, 4)
    assert m.shape == (2, 4, 4) and m[1].all() and m[0].sum() == 8
    assert spec.flops(1, 2, 4, 4, 8) == 4 * 8 * (8 + 16)


def test_specs_are_hashable_and_compare_by_value():
    lay = torch.ones(1, 2, 2, dtype=torch.bool)
    a = AttentionSpec(kind="block_sparse", block_size=2, layout=lay)
    b = AttentionSpec(kind="block_sparse", block_size=2, layout=lay.clone())
    assert a == b and hash(a) == hash(b)
    assert AttentionSpec(causal=True) != AttentionSpec()
    assert len({AttentionSpec(), AttentionSpec(), AttentionSpec(causal=True)}) == 2


def test_spec_is_frozen():
    with pytest.raises(AttributeError):
        AttentionSpec().causal = True


# ----------------------------------------------------------------- FLOPs
@pytest.mark.parametrize(
    "kw",
    [
        dict(kind="dense"),
        dict(kind="dense", causal=True),
        dict(kind="sliding_window", window=5, causal=True),
        dict(kind="sliding_window", window=(3, 2)),
        dict(kind="block_sparse", pattern="bigbird", block_size=8, heads=3, causal=True),
    ],
)
@pytest.mark.parametrize("n_q,n_k", [(37, 37), (20, 45), (1500, 1300)])
def test_flops_equal_pair_count(kw, n_q, n_k):
    spec = AttentionSpec(**kw)
    heads, batch, d = 3, 2, 40
    pairs = int(spec.dense_mask(n_q, n_k).sum())
    if spec.num_heads() == 1:
        pairs *= heads
    fwd = spec.flops(batch=batch, heads=heads, n_q=n_q, n_k=n_k, head_dim=d, mode="fwd")
    assert fwd == 4 * d * pairs * batch
    assert spec.flops(batch, heads, n_q, n_k, d, mode="bwd") * 2 == 5 * fwd
    assert spec.flops(batch, heads, n_q, n_k, d, mode="fwd_bwd") * 2 == 7 * fwd


def test_flops_dense_closed_form():
    n, d = 4096, 128
    assert AttentionSpec().flops(1, 1, n, n, d) == 4 * d * n * n
    assert AttentionSpec(causal=True).flops(1, 1, n, n, d) == 4 * d * n * (n + 1) // 2


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kw,words",
    [
        (dict(kind="sparse"), ["kind", "'sparse'", "dense", "sliding_window", "block_sparse"]),
        (dict(causal="yes"), ["causal", "'yes'", "bool"]),
        (dict(kind="sliding_window"), ["window", "None", "int"]),
        (dict(kind="sliding_window", window=0), ["window", "0", ">= 1"]),
        (dict(kind="sliding_window", window=-3), ["window", "-3", ">= 1"]),
        (dict(kind="sliding_window", window=2.5), ["window", "2.5"]),
        (dict(kind="sliding_window", window=(1, -2)), ["window", "(1, -2)", ">= 0", "-1"]),
        (dict(kind="dense", sink=-1), ["sink", "-1", ">= 0"]),
        (dict(kind="dense", softcap=0.0), ["softcap", "0.0", "> 0"]),
        (dict(kind="custom"), ["mask_mod", "callable"]),
        (dict(kind="custom", mask_mod=lambda q, k: q >= k), ["mask_mod", "4 arguments"]),
        (dict(kind="custom", mask_mod=lambda b, h, q, k: q - k), ["mask_mod", "bool"]),
        (dict(kind="custom", mask_mod=lambda b, h, q, k: q[5]), ["mask_mod", "IndexError"]),
        (dict(kind="sliding_window", window=4, mask_mod=lambda b, h, q, k: q >= k), ["mask_mod", "custom"]),
        (dict(kind="sliding_window", window=(1, 2, 3)), ["window", "(1, 2, 3)"]),
        (dict(kind="dense", window=8), ["window", "8", "dense"]),
        (dict(kind="dense", block_size=64), ["block_size", "block_sparse"]),
        (dict(kind="sliding_window", window=4, pattern="local"), ["pattern", "block_sparse"]),
        (dict(kind="block_sparse"), ["pattern", "layout"]),
        (dict(kind="block_sparse", pattern="diagonal"), ["pattern", "'diagonal'", "bigbird"]),
        (dict(kind="block_sparse", pattern="local", block_size=48), ["block_size", "48", "power of two"]),
        (dict(kind="block_sparse", pattern="local", block_size=0), ["block_size", "0", "power of two"]),
        (dict(kind="block_sparse", pattern="local", stride=2), ["stride", "local", "local_blocks"]),
        (dict(kind="block_sparse", pattern="random", density=1.5), ["density", "1.5", "(0, 1]"]),
        (dict(kind="block_sparse", pattern="local", local_blocks=0), ["local_blocks", "0", ">= 1"]),
        (dict(kind="block_sparse", pattern="bigbird", seed="a"), ["seed", "'a'", "int"]),
        (dict(kind="block_sparse", layout=torch.ones(2, 2)), ["layout", "[H or 1, Mb, Kb]"]),
        (dict(kind="block_sparse", layout=torch.ones(1, 2, 2)), ["layout", "float32", "bool"]),
        (
            dict(kind="block_sparse", layout=torch.ones(1, 2, 2, dtype=torch.bool), pattern="local"),
            ["exactly one", "pattern", "layout"],
        ),
    ],
)
def test_invalid_specs_name_field_value_and_allowed(kw, words):
    with pytest.raises(ValueError) as err:
        AttentionSpec(**kw)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_layout_of_wrong_size_for_the_sequence():
    spec = AttentionSpec(kind="block_sparse", block_size=2, layout=torch.ones(1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"layout has shape \(1, 2, 2\).*\[H or 1, 3, 2\]"):
        spec.dense_mask(6, 4)


@pytest.mark.parametrize("bad", [dict(n_q=0), dict(n_k=-1), dict(head_dim=0), dict(mode="both")])
def test_flops_errors(bad):
    args = dict(batch=1, heads=1, n_q=4, n_k=4, head_dim=8, mode="fwd") | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        AttentionSpec().flops(**args)


def test_layout_is_copied_so_the_callers_edits_do_not_reach_the_frozen_spec():
    layout = torch.tensor([[[True, False], [True, True]]])
    spec = AttentionSpec(kind="block_sparse", block_size=2, layout=layout, causal=True)
    twin = AttentionSpec(kind="block_sparse", block_size=2, layout=layout.clone(), causal=True)
    before_hash, before_mask = hash(spec), spec.dense_mask(4, 4)
    layout[0, 0, 1] = True  # the caller reuses its tensor
    layout[0, 1, 0] = False
    assert spec.layout.data_ptr() != layout.data_ptr()
    assert hash(spec) == before_hash and spec == twin
    assert torch.equal(spec.dense_mask(4, 4), before_mask)


@pytest.mark.parametrize("seed", [-1, 2**63, 2**70, 1.5, True])
def test_seed_outside_0_to_2_63_is_refused_naming_the_field(seed):
    with pytest.raises(ValueError, match=r"AttentionSpec\.seed=.*\[0, 2\*\*63 - 1\]"):
        AttentionSpec(kind="block_sparse", pattern="random", density=0.5, seed=seed)


def test_largest_seed_draws_a_layout():
    spec = AttentionSpec(kind="block_sparse", pattern="random", density=0.5, block_size=16, seed=2**63 - 1)
    assert spec.block_layout(64, 64).shape == (1, 4, 4)
