"""Statistics for sweep reports: mean / std over seeds, Student-t quantiles, and the
seed-paired difference of a run against a baseline with its confidence interval.

Pure functions of plain numbers (the standard library only: no numpy, no scipy). DESIGN.md ("Results that hold"):
experiments run >= 3 seeds and compare against a named baseline with paired confidence
intervals; a difference whose interval crosses 0 is "not significant".

The t distribution (``df`` degrees of freedom, ``x = df / (df + t**2)``)::

    P(T <= t) = 1 - I_x(df / 2, 1 / 2) / 2        for t >= 0 (and symmetric for t < 0)

with ``I_x(a, b)`` the regularised incomplete beta function, evaluated by its continued
fraction (modified Lentz). The quantile inverts the CDF by bisection. For df above
``LARGE_DF`` the continued fraction needs ~sqrt(df) terms, so the quantile comes from the
normal quantile and the Cornish-Fisher expansion in 1/df instead (error ~ df**-4).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

LARGE_DF = 1e5  # above it: normal quantile + Cornish-Fisher terms (the 4th term is ~1e-20)
_EPS = 1e-16
_TINY = 1e-300


def mean(values) -> float:
    """Arithmetic mean (exact rational arithmetic, as `statistics.mean`); nan for no values."""
    values = list(values)
    return float(statistics.mean(values)) if values else math.nan


def std(values) -> float:
    """Sample standard deviation (divides by n - 1; exactly 0 for equal values); nan for fewer than 2."""
    values = list(values)
    return float(statistics.stdev(values)) if len(values) >= 2 else math.nan


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (Numerical Recipes' betacf, modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            delta = c * d
            h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def regularized_incomplete_beta(a: float, b: float, x: float, one_minus_x: float | None = None) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for a, b > 0 and x in [0, 1]. ``one_minus_x``: 1 - x when
    the caller knows it more accurately than ``1 - x`` rounds (x close to 1)."""
    if not (a > 0 and b > 0):
        raise ValueError(f"incomplete beta needs a > 0 and b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete beta needs x in [0, 1], got x={x}")
    y = 1.0 - x if one_minus_x is None else one_minus_x
    if x == 0.0 or y == 0.0:
        return 0.0 if x == 0.0 else 1.0
    log_x = math.log(x) if x < 0.5 else math.log1p(-y)
    log_y = math.log(y) if y < 0.5 else math.log1p(-x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * log_x + b * log_y
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, y) / b


def _check_df(df: float) -> None:
    if isinstance(df, bool) or not isinstance(df, int | float) or math.isnan(df) or df < 1:
        raise ValueError(f"degrees of freedom df={df!r} is not allowed: a number >= 1 (math.inf = normal)")


def _check_probability(name: str, p: float) -> None:
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 < p < 1.0:
        raise ValueError(f"{name}={p!r} is not allowed: a number strictly between 0 and 1")


def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _t_upper_tail(t: float, df: float) -> float:
    """P(T > t) for t >= 0, computed directly (not as 1 - cdf) to keep far tails accurate."""
    if math.isinf(df):
        return 0.5 * math.erfc(t / math.sqrt(2.0))
    if math.isinf(t):
        return 0.0
    return 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t), t * t / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (df = math.inf: the normal)."""
    _check_df(df)
    tail = _t_upper_tail(abs(t), df)
    return 1.0 - tail if t > 0 else tail


def _quantile_by_bisection(upper_tail, p: float) -> float:
    """The x with P(X <= x) = p for a distribution symmetric about 0, from its upper tail
    P(X > x) (x >= 0, decreasing): bisection on the smaller tail, min(p, 1 - p), which is
    exact in floating point, so far quantiles keep their relative accuracy."""
    q, sign = (1.0 - p, 1.0) if p > 0.5 else (p, -1.0)
    if q == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while upper_tail(hi) > q:
        lo, hi = hi, 2.0 * hi
        if hi > 1e300:
            raise ArithmeticError(f"quantile {p} out of range")
    for _ in range(2000):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if upper_tail(mid) > q else (lo, mid)
    return sign * 0.5 * (lo + hi)


def normal_quantile(p: float) -> float:
    _check_probability("p", p)
    return _quantile_by_bisection(lambda z: _t_upper_tail(z, math.inf), p)


def t_quantile(p: float, df: float) -> float:
    """The ``p``-quantile of Student's t with ``df`` >= 1 degrees of freedom (math.inf: normal)."""
    _check_probability("p", p)
    _check_df(df)
    if df > LARGE_DF:
        z = normal_quantile(p)
        if math.isinf(df):
            return z
        z2 = z * z
        return (z + z * (z2 + 1) / (4 * df)  # Cornish-Fisher expansion of t in 1/df
                + z * ((5 * z2 + 16) * z2 + 3) / (96 * df**2)
                + z * (((3 * z2 + 19) * z2 + 17) * z2 - 15) / (384 * df**3))
    return _quantile_by_bisection(lambda t: _t_upper_tail(t, df), p)


def t_critical(confidence: float, df: float) -> float:
    """The two-sided critical value: P(|T| <= t) = confidence, i.e. the (1 + confidence) / 2 quantile."""
    _check_probability("confidence", confidence)
    return t_quantile(0.5 + 0.5 * confidence, df)


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over the seeds both have: mean, ``confidence`` t interval [low, high] (nan with
    fewer than 2 pairs), the number of pairs ``n`` and the ``seeds`` used."""

    mean: float
    low: float
    high: float
    n: int
    seeds: tuple
    confidence: float = 0.95

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (False without an interval)."""
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def describe(self, digits: int = 3) -> str:
        """``-0.031 [-0.052, -0.010]``, ``+0.004 [-0.012, 0.020] not significant``."""
        if self.n == 0:
            return "no seeds in common"
        text = f"{self.mean:+.{digits}f}"
        if self.n < 2:
            return f"{text} (1 paired seed: no interval) not significant"
        text += f" [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        return text if self.significant else text + " not significant"


def paired_difference(a_by_seed: dict, b_by_seed: dict, confidence: float = 0.95) -> PairedDifference:
    """Seed-paired difference ``a - b``: the seeds both dicts hold with finite values are paired
    (the others dropped); mean of the per-seed differences ± t(confidence, n - 1) * sd / sqrt(n)."""
    _check_probability("confidence", confidence)

    def finite(v) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    seeds = tuple(sorted(s for s in a_by_seed.keys() & b_by_seed.keys()
                         if s is not None and finite(a_by_seed[s]) and finite(b_by_seed[s])))
    diffs = [a_by_seed[s] - b_by_seed[s] for s in seeds]
    n = len(diffs)
    m = mean(diffs)
    if n < 2:
        return PairedDifference(m, math.nan, math.nan, n, seeds, confidence)
    half = t_critical(confidence, n - 1) * std(diffs) / math.sqrt(n)
    return PairedDifference(m, m - half, m + half, n, seeds, confidence)
