"""The study's statistics: means with 95% intervals and paired per-seed comparisons.

Every seed draws its own data split and initialization, so the seeds are independent repeats
of the whole experiment and the spread over seeds is the spread a reader would see on a rerun.

* :func:`mean_interval`: the mean over seeds with the Student-t 95% interval
  (mean ± t_{0.975, n−1} · s / √n). One seed has no interval (``lo`` and ``hi`` are NaN).
* :func:`paired`: a combination against the baseline on the same seeds: the per-seed differences
  d_i = metric(combination, seed i) − metric(baseline, seed i), their mean with the t interval,
  the exact two-sided sign-flip permutation p-value (all 2^n sign patterns of the d_i; random
  patterns from a fixed generator beyond 16 seeds), and the counts of seeds where the difference
  is positive, negative or zero. A difference is called real only where its interval excludes 0.

Pure Python (no numpy): the records are small.
"""

from __future__ import annotations

import math
import random
import statistics
from typing import Mapping, NamedTuple, Sequence

__all__ = ["Interval", "Paired", "t_quantile", "mean_interval", "paired", "sign_flip_p", "STILL_FALLING_SHARE"]

# A run counts as still training when more than this share of its whole decrease in training
# loss came in the last quarter of its steps (runner.loss_drop_share; report.run_warnings).
STILL_FALLING_SHARE = 0.10

# Student-t 0.975 quantiles for 1 .. 30 degrees of freedom (three decimals, as tabulated).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
_Z975 = 1.959963984540054


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (two-sided 95%).

    Tabulated up to 30; beyond, the Cornish–Fisher expansion in 1/df (error below 1e-4).

    Example:
        >>> t_quantile(7), round(t_quantile(100), 3)
        (2.365, 1.984)
    """
    if df < 1:
        raise ValueError(f"t_quantile(): argument 'df' expected an int >= 1, got {df!r}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


class Interval(NamedTuple):
    """A mean over ``n`` values and its 95% interval [lo, hi] (NaN when n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def mean_interval(values: Sequence[float | None]) -> Interval:
    """Mean and Student-t 95% interval of the finite ``values`` (None and NaN are left out).

    Example:
        >>> mean_interval([0.9, 0.92, 0.94])
        Interval(mean=0.92, lo=0.8703..., hi=0.9696..., n=3)
        >>> mean_interval([0.9]).lo
        nan
    """
    finite = _finite(values)
    if not finite:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = statistics.fmean(finite)
    if len(finite) < 2:
        return Interval(mean, math.nan, math.nan, len(finite))
    half = t_quantile(len(finite) - 1) * statistics.stdev(finite) / math.sqrt(len(finite))
    return Interval(mean, mean - half, mean + half, len(finite))


def sign_flip_p(differences: Sequence[float], *, samples: int = 20000) -> float:
    """Two-sided p-value of the sign-flip permutation test that the differences are centred on 0.

    Under the null the sign of each paired difference is a fair coin; the statistic is |Σ d_i|.
    Exact over all 2^n sign patterns for n ≤ 16, otherwise ``samples`` random patterns from a
    generator seeded with 0 (so the same records give the same p). With n seeds the smallest
    possible p is 2 / 2^n (0.0625 at 5 seeds, 0.031 at 6).

    Example:
        >>> sign_flip_p([0.1, 0.2, 0.15, 0.3, 0.05, 0.12])
        0.03125
        >>> sign_flip_p([0.0, 0.0])
        1.0
    """
    d = _finite(differences)
    if not d:
        return math.nan
    observed = abs(sum(d)) - 1e-12 * sum(abs(x) for x in d)  # ties count as at least as extreme
    if len(d) <= 16:
        sums = [0.0]  # the signed sums of all 2^n patterns, built one difference at a time
        for x in d:
            sums = [s + x for s in sums] + [s - x for s in sums]
        return sum(abs(s) >= observed for s in sums) / len(sums)
    rng = random.Random(0)
    hits = sum(abs(sum(x if rng.random() < 0.5 else -x for x in d)) >= observed for _ in range(samples))
    return (hits + 1) / (samples + 1)


class Paired(NamedTuple):
    """A combination minus the baseline over the seeds both have a finite value for."""

    n: int
    mean: float
    lo: float
    hi: float
    p: float
    positive: int
    negative: int
    ties: int

    @property
    def excludes_zero(self) -> bool:
        """The 95% interval lies entirely above or below 0 (needs at least 2 seeds)."""
        return self.n >= 2 and (self.lo > 0 or self.hi < 0)


def paired(values: Mapping[int, float | None], baseline: Mapping[int, float | None]) -> Paired:
    """Per-seed differences ``values[seed] − baseline[seed]`` on the seeds both have.

    Example:
        >>> r = paired({0: 0.90, 1: 0.91, 2: 0.93}, {0: 0.95, 1: 0.96, 2: 0.97})
        >>> round(r.mean, 3), r.excludes_zero, (r.positive, r.negative)
        (-0.047, True, (0, 3))
    """
    seeds = sorted(s for s in values if s in baseline and _finite([values[s]]) and _finite([baseline[s]]))
    d = [float(values[s]) - float(baseline[s]) for s in seeds]  # type: ignore[arg-type]
    interval = mean_interval(d)
    return Paired(len(d), interval.mean, interval.lo, interval.hi, sign_flip_p(d),
                  sum(x > 0 for x in d), sum(x < 0 for x in d), sum(x == 0 for x in d))
