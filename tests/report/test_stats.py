"""`attnlab.report.stats`: Student-t quantiles against known values, seed-paired differences
with intervals worked out by hand, significance both ways, seed pairing."""

import math

import pytest

from attnlab.report.stats import (
    mean,
    paired_difference,
    regularized_incomplete_beta,
    std,
    t_cdf,
    t_critical,
    t_quantile,
)


@pytest.mark.parametrize(("df", "expected"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423)])
def test_t_critical_95_table_values(df, expected):
    assert t_critical(0.95, df) == pytest.approx(expected, abs=1e-4)


def test_t_large_df_tends_to_the_normal():
    assert t_critical(0.95, 1e6) == pytest.approx(1.95996, abs=1e-5)
    assert t_critical(0.95, 1e5) == pytest.approx(1.95996, abs=3e-5)  # either side of the series switch
    assert t_critical(0.95, 99_999) == pytest.approx(t_critical(0.95, 100_001), abs=1e-9)
    assert t_critical(0.95, math.inf) == pytest.approx(1.959964, abs=1e-6)
    assert t_critical(0.99, math.inf) == pytest.approx(2.575829, abs=1e-6)


@pytest.mark.parametrize("p", [1e-9, 0.001, 0.025, 0.2, 0.5, 0.7, 0.9, 0.975, 0.999, 1 - 1e-9])
def test_t_quantile_closed_forms(p):
    # df = 1 (Cauchy): tan(pi (p - 1/2)); df = 2: (2p - 1) / sqrt(2 p (1 - p))
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-6, abs=1e-9)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-6, abs=1e-9)
    # df = 4: t = sign(p - 1/2) * 2 sqrt(q - 1), a = 4 p (1 - p), q = cos(arccos(sqrt a) / 3) / sqrt a
    a = 4 * p * (1 - p)
    q = math.cos(math.acos(math.sqrt(a)) / 3) / math.sqrt(a)
    assert t_quantile(p, 4) == pytest.approx(math.copysign(2 * math.sqrt(q - 1), p - 0.5), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("df", [1, 1.5, 3, 7, 50, 1000])
def test_t_cdf_inverts_the_quantile(df):
    for p in (0.01, 0.3, 0.5, 0.8, 0.995):
        assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)
    assert t_cdf(-2.0, df) == pytest.approx(1 - t_cdf(2.0, df), abs=1e-14)


def test_incomplete_beta_known_values():
    assert regularized_incomplete_beta(1, 1, 0.3) == pytest.approx(0.3)  # uniform
    assert regularized_incomplete_beta(2, 1, 0.3) == pytest.approx(0.09)  # x^2
    assert regularized_incomplete_beta(1, 3, 0.5) == pytest.approx(1 - 0.5**3)  # 1 - (1 - x)^3


@pytest.mark.parametrize("bad", [0, 0.5, -1, math.nan, "3", True])
def test_bad_df_is_rejected_by_name(bad):
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0.9, bad)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, math.nan])
def test_bad_confidence_is_rejected_by_name(bad):
    with pytest.raises(ValueError, match="confidence"):
        t_critical(bad, 3)
    with pytest.raises(ValueError, match="confidence"):
        paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 1.0}, confidence=bad)


def test_mean_and_std():
    assert mean([1.0, 2.0, 6.0]) == 3.0 and math.isnan(mean([]))
    assert std([1.0, 2.0, 6.0]) == pytest.approx(math.sqrt((4 + 1 + 9) / 2))
    assert math.isnan(std([1.0]))


def test_paired_interval_by_hand_not_significant():
    # a - b per seed: -0.10, -0.05, -0.15 (every seed lower, yet 3 seeds cannot tell).
    # mean = -0.10; deviations 0, +0.05, -0.05 -> sum of squares 0.005, sd = sqrt(0.005 / 2) = 0.05
    # se = 0.05 / sqrt(3) = 0.0288675; t(0.975, df=2) = 4.302653; half width = 0.124207
    # CI = [-0.224207, 0.024207]: crosses 0
    a = {0: 2.00, 1: 2.10, 2: 2.05}
    b = {0: 2.10, 1: 2.15, 2: 2.20}
    d = paired_difference(a, b)
    assert d.n == 3 and d.seeds == (0, 1, 2)
    assert d.mean == pytest.approx(-0.10)
    assert d.low == pytest.approx(-0.10 - 4.302653 * 0.05 / math.sqrt(3), abs=1e-6)
    assert d.low == pytest.approx(-0.224207, abs=1e-6) and d.high == pytest.approx(0.024207, abs=1e-6)
    assert not d.significant
    assert d.describe() == "-0.100 [-0.224, 0.024] not significant"


def test_paired_interval_by_hand_significant_both_signs():
    # a - b per seed: -0.30, -0.25, -0.35: mean -0.30, sd 0.05, half width 0.124207 as above
    a = {0: 1.80, 1: 1.90, 2: 1.85}
    b = {0: 2.10, 1: 2.15, 2: 2.20}
    d = paired_difference(a, b)
    assert (d.low, d.high) == (pytest.approx(-0.424207, abs=1e-6), pytest.approx(-0.175793, abs=1e-6))
    assert d.significant and d.describe() == "-0.300 [-0.424, -0.176]"
    up = paired_difference(b, a)  # the other way round: +0.30 [0.176, 0.424]
    assert up.significant and up.describe() == "+0.300 [0.176, 0.424]"


def test_paired_interval_at_another_confidence():
    # diffs 1, 2, 3, 6: mean 3, sd sqrt((4 + 1 + 0 + 9) / 3) = 2.160247, se = 1.080123
    # t(0.95, df=3) = 2.353363 (90% two-sided): half width 2.541923 -> [0.458077, 5.541923]
    d = paired_difference({1: 1.0, 2: 2.0, 3: 3.0, 4: 6.0}, dict.fromkeys((1, 2, 3, 4), 0.0), confidence=0.90)
    assert d.low == pytest.approx(3 - 2.353363 * 2.160247 / 2, abs=1e-5) and d.significant


def test_pairing_drops_unpaired_and_non_finite_seeds():
    a = {0: 1.0, 1: 2.0, 2: 3.0, 7: 100.0, 3: math.nan}
    b = {0: 0.5, 1: 1.0, 2: 2.5, 9: -100.0, 3: 1.0}
    d = paired_difference(a, b)
    assert d.seeds == (0, 1, 2) and d.n == 3
    assert d.mean == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert d == paired_difference({s: a[s] for s in (0, 1, 2)}, {s: b[s] for s in (0, 1, 2)})


def test_fewer_than_two_pairs_have_no_interval():
    one = paired_difference({0: 1.0, 1: 2.0}, {1: 1.5, 2: 0.0})
    assert one.n == 1 and one.mean == pytest.approx(0.5) and math.isnan(one.low) and math.isnan(one.high)
    assert not one.significant and "not significant" in one.describe()
    none = paired_difference({0: 1.0}, {1: 1.0})
    assert none.n == 0 and math.isnan(none.mean) and not none.significant
    assert none.describe() == "no seeds in common"
