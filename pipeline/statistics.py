"""Statistics that fit bimodal outcomes: a run mostly trains or dies (collapses to chance), and now
and then stalls in between (``outcomes``).

Test accuracies over seeds are bimodal, so a mean with a Student t interval misleads (it can give
[-35%, 134%]). This module reports the two things apart:

- **reliability**: the share of runs that trained, with a Wilson (or exact) binomial interval, and
  Fisher's exact test for a difference in that share between two variants;
- **accuracy**: a mean with a percentile bootstrap interval, which never leaves the range of the data.

Variants are compared with the baseline paired by seed (same seed, same data order): the mean
difference with a bootstrap interval, an exact sign-flip permutation test (the primary p-value) and a
paired t-test beside it; p-values across comparisons are adjusted with Holm's method. A power statement
(``minimum_detectable_difference``) keeps "not significant" from being read as "no difference".

Pure functions on arrays; no I/O. scipy.stats does the statistics wherever it has them; only Holm's
adjustment (which scipy lacks) is written here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, stats

DIED_MARGIN = 1.5
"""A run died when its test accuracy is below DIED_MARGIN / num_classes (1.5x chance: 15% for 10
classes). A collapsed network predicts (almost) one class and scores about 1/num_classes."""

TRAINED_FROM = 0.5
"""A run trained when its test accuracy is at least TRAINED_FROM (and at least 1.5x chance): it gets
most test images right. Between the two lines a run *stalled*: it left chance but ended far below
what its variant reaches when it trains (docs/results.md, "How to read", says where the line falls
in the published runs)."""

OUTCOMES = ("trained", "stalled", "died")

EXACT_PERMUTATION_MAX_PAIRS = 16
"""Up to this many pairs the sign-flip test enumerates all 2**n sign flips (65,536 at most) and is
exact; above it, it draws MONTE_CARLO_RESAMPLES random sign flips."""

MONTE_CARLO_RESAMPLES = 99_999
BOOTSTRAP_RESAMPLES = 9_999


@dataclass(frozen=True)
class Reliability:
    """The share of runs that trained: ``k`` of ``n``, with a binomial interval [low, high]."""

    share: float
    low: float
    high: float
    k: int
    n: int


@dataclass(frozen=True)
class MeanInterval:
    """A mean over ``n`` values with a bootstrap interval [low, high] (NaN when n < 2)."""

    mean: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class PairedComparison:
    """A variant against the baseline over ``n`` seeds both have (pairs with a NaN are left out).

    ``p_value`` is the primary p-value (two-sided sign-flip permutation test on the paired
    differences, exact when ``permutation_exact``); ``p_value_ttest`` is the paired t-test, reported
    beside it. ``smallest_possible_p_value`` is the least p-value the sign-flip test can give with
    these pairs (2 / 2**k for k non-zero differences): when it is above alpha, no difference of any size
    could be called significant. ``note`` says why a result is degenerate, else it is "".
    """

    n: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    p_value_ttest: float
    permutation_exact: bool
    smallest_possible_p_value: float
    note: str


@dataclass(frozen=True)
class ConditionalComparison(PairedComparison):
    """A PairedComparison over the seeds where BOTH the variant and the baseline trained.

    It is conditional on training: it answers "when both train, how do they differ?", not "which
    variant is better?". ``n`` counts the kept pairs, ``n_total`` the pairs before filtering, and
    ``kept`` marks, in input order, which pairs were kept.
    """

    n_total: int = 0
    kept: tuple[bool, ...] = ()


def _as_float_array(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")


# --- reliability --------------------------------------------------------------------------------


def _accuracies(accuracies: ArrayLike, num_classes: int) -> np.ndarray:
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    return _as_float_array(accuracies, "accuracies")


def trained_from(num_classes: int) -> float:
    """The test accuracy from which a run counts as trained: TRAINED_FROM, or 1.5x chance if higher."""
    return max(TRAINED_FROM, DIED_MARGIN / num_classes)


def trained(accuracies: ArrayLike, num_classes: int) -> np.ndarray:
    """Which runs trained: test accuracy >= trained_from(num_classes). NaN counts as not trained."""
    array = _accuracies(accuracies, num_classes)
    with np.errstate(invalid="ignore"):
        return np.asarray(array >= trained_from(num_classes), dtype=bool)


def outcomes(accuracies: ArrayLike, num_classes: int) -> np.ndarray:
    """Each run's outcome: "trained" (trained()), "died" (below DIED_MARGIN / num_classes, or NaN),
    or "stalled" (in between)."""
    array = _accuracies(accuracies, num_classes)
    with np.errstate(invalid="ignore"):
        died = ~(array >= DIED_MARGIN / num_classes)
    return np.where(trained(array, num_classes), "trained", np.where(died, "died", "stalled"))


def reliability(
    trained_flags: ArrayLike,
    confidence: float = 0.95,
    method: Literal["wilson", "exact"] = "wilson",
) -> Reliability:
    """The share of runs that trained, with a binomial interval (scipy.stats.binomtest).

    Wilson by default: its coverage stays close to nominal for small n and it is never degenerate at
    0/n or n/n; ``method="exact"`` gives Clopper-Pearson (coverage at least nominal, wider). No runs
    gives NaN share and interval.
    """
    _check_confidence(confidence)
    flags = np.asarray(trained_flags, dtype=bool).ravel()
    n, k = int(flags.size), int(flags.sum())
    if n == 0:
        return Reliability(math.nan, math.nan, math.nan, 0, 0)
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method=method)
    return Reliability(k / n, float(ci.low), float(ci.high), k, n)


def fisher_exact_p_value(k: int, n: int, reference_k: int, reference_n: int) -> float:
    """Two-sided Fisher's exact test (scipy.stats.fisher_exact) that k of n runs and reference_k of
    reference_n runs trained at one common rate: the test for a difference in the share of runs that
    train (or die), e.g. 7/10 against 10/10. Exact for any n, so it fits 10 seeds where a chi-squared
    test does not. NaN when either side has no runs.

    From the 2x2 table [[k, n - k], [reference_k, reference_n - reference_k]]: the probability, under
    the hypergeometric law with the margins fixed, of every table no more likely than the observed one.
    """
    for name, (kk, nn) in {"k, n": (k, n), "reference_k, reference_n": (reference_k, reference_n)}.items():
        if not 0 <= kk <= nn:
            raise ValueError(f"{name} must satisfy 0 <= k <= n, got {kk} and {nn}")
    if n == 0 or reference_n == 0:
        return math.nan
    table = [[int(k), int(n - k)], [int(reference_k), int(reference_n - reference_k)]]
    return float(min(stats.fisher_exact(table, alternative="two-sided").pvalue, 1.0))


# --- accuracy -----------------------------------------------------------------------------------


def _bootstrap_mean(values: np.ndarray, confidence: float, seed: int) -> tuple[float, float, float]:
    """Mean and percentile bootstrap interval of ``values`` (no NaN); NaN interval for n < 2.

    Percentile, not BCa: every bootstrap mean is a mean of data values, so its percentiles lie in
    [min, max] of the data by construction (the clip only removes float rounding); BCa fails on
    constant data and its jackknife acceleration is unstable for a few bimodal values.
    """
    n = values.size
    if n == 0:
        return math.nan, math.nan, math.nan
    if np.all(values == values[0]):
        value = float(values[0])
        return value, (value if n >= 2 else math.nan), (value if n >= 2 else math.nan)
    mean = float(np.mean(values))
    if n < 2:
        return mean, math.nan, math.nan
    result = stats.bootstrap(
        (values,),
        np.mean,
        confidence_level=confidence,
        method="percentile",
        n_resamples=BOOTSTRAP_RESAMPLES,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    lowest, highest = float(values.min()), float(values.max())
    low = float(np.clip(result.confidence_interval.low, lowest, highest))
    high = float(np.clip(result.confidence_interval.high, lowest, highest))
    return mean, low, high


def mean_interval(values: ArrayLike, confidence: float = 0.95, seed: int = 0) -> MeanInterval:
    """Mean and percentile bootstrap interval (scipy.stats.bootstrap), deterministic for a seed.

    The interval never leaves [min, max] of the values, so accuracies stay within [0, 1]. NaN values
    are left out (``n`` counts the rest). Fewer than 2 values: NaN interval; constant values: [m, m].
    With few seeds the percentile interval is too narrow rather than too wide; read it with ``n``.
    """
    _check_confidence(confidence)
    array = _as_float_array(values, "values")
    array = array[~np.isnan(array)]
    mean, low, high = _bootstrap_mean(array, confidence, seed)
    return MeanInterval(mean, low, high, int(array.size))


# --- paired comparison --------------------------------------------------------------------------


def _mean_difference(variant: np.ndarray, baseline: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(variant - baseline, axis=axis)


def _sign_flip_p_value(variant: np.ndarray, baseline: np.ndarray, seed: int) -> tuple[float, bool]:
    """Two-sided p-value of the mean paired difference under random swaps within pairs (sign flips)."""
    n = variant.size
    exact = n <= EXACT_PERMUTATION_MAX_PAIRS
    result = stats.permutation_test(
        (variant, baseline),
        _mean_difference,
        permutation_type="samples",
        vectorized=True,
        n_resamples=2**n if exact else MONTE_CARLO_RESAMPLES,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(min(result.pvalue, 1.0)), exact


def paired_comparison(
    variant_values: ArrayLike,
    baseline_values: ArrayLike,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Variant minus baseline, paired by position (the caller aligns both arrays by seed).

    Returns the mean difference with a percentile bootstrap interval (never outside the range of the
    differences), a primary p-value and a paired t-test p-value. Pairs with a NaN are left out.

    Primary p-value: the two-sided sign-flip permutation test (scipy.stats.permutation_test,
    ``permutation_type="samples"``), exact for up to EXACT_PERMUTATION_MAX_PAIRS pairs. Under the null
    hypothesis that the variant does not matter, swapping the two runs of a seed is as likely as not;
    the test assumes nothing else. The paired t-test assumes roughly normal differences, which a
    collapsed run (a difference of -70 pp among differences of +-1 pp) breaks: its p-value is reported
    beside the primary one as a check, not used for the verdict. Note the sign-flip test's floor: with
    k non-zero differences its p-value is at least 2 / 2**k (1/16 for 5 seeds), see
    ``smallest_possible_p_value``.

    Degenerate cases, without warnings: fewer than 2 pairs gives NaN p-values (and a NaN interval);
    all differences zero gives p-values 1.0 and the interval [0, 0]; both say so in ``note``.
    """
    _check_confidence(confidence)
    variant = _as_float_array(variant_values, "variant_values")
    baseline = _as_float_array(baseline_values, "baseline_values")
    if variant.shape != baseline.shape:
        raise ValueError(
            f"variant_values and baseline_values must pair up one to one, got {variant.size} and {baseline.size} values"
        )
    complete = ~(np.isnan(variant) | np.isnan(baseline))
    variant, baseline = variant[complete], baseline[complete]
    differences = variant - baseline
    n = int(differences.size)
    dropped = int((~complete).sum())
    dropped_note = f"{dropped} pair(s) with a missing value left out" if dropped else ""

    def _note(*parts: str) -> str:
        return "; ".join(part for part in (*parts, dropped_note) if part)

    mean, low, high = _bootstrap_mean(differences, confidence, seed)
    if n < 2:
        return PairedComparison(
            n, mean, low, high, math.nan, math.nan, True, math.nan, _note(f"{n} paired seed(s), too few to test")
        )
    nonzero = int(np.count_nonzero(differences))
    floor = min(1.0, 2.0 / 2**nonzero)
    if nonzero == 0:
        note = _note(f"identical to the baseline on all {n} paired seeds, p-values set to 1")
        return PairedComparison(n, 0.0, 0.0, 0.0, 1.0, 1.0, True, 1.0, note)

    p_value, exact = _sign_flip_p_value(variant, baseline, seed)
    with warnings.catch_warnings():
        # constant non-zero differences: t is infinite and scipy warns about precision; p = 0 stands
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value_ttest = float(stats.ttest_rel(variant, baseline).pvalue)
    note = _note("" if exact else f"sign-flip test from {MONTE_CARLO_RESAMPLES:,} random sign flips")
    return PairedComparison(n, mean, low, high, p_value, p_value_ttest, exact, floor, note)


def conditional_comparison(
    variant_values: ArrayLike,
    baseline_values: ArrayLike,
    num_classes: int,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConditionalComparison:
    """``paired_comparison`` over the seeds where both the variant and the baseline trained.

    Conditional on training: it measures how good a variant is when it trains, and says nothing about
    how often it does (that is ``reliability``). Selecting on the outcome makes the kept pairs no longer
    a random sample of seeds, so read it beside the unconditional comparison, never instead of it.
    """
    variant = _as_float_array(variant_values, "variant_values")
    baseline = _as_float_array(baseline_values, "baseline_values")
    if variant.shape != baseline.shape:
        raise ValueError(
            f"variant_values and baseline_values must pair up one to one, got {variant.size} and {baseline.size} values"
        )
    keep = trained(variant, num_classes) & trained(baseline, num_classes)
    result = paired_comparison(variant[keep], baseline[keep], confidence=confidence, seed=seed)
    dropped = int(variant.size - keep.sum())
    note = "; ".join(
        part
        for part in (f"conditional on training: {dropped} pair(s) where a run did not train left out", result.note)
        if part
    )
    return ConditionalComparison(
        **(asdict(result) | {"note": note}),
        n_total=int(variant.size),
        kept=tuple(bool(flag) for flag in keep),
    )


# --- multiple comparisons and power -------------------------------------------------------------


def holm(p_values: Sequence[float] | ArrayLike) -> np.ndarray:
    """Holm's step-down adjustment (controls the family-wise error rate), in input order.

    With the m non-NaN p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted value of p_(i)
    is max_{j <= i} min(1, (m - j + 1) * p_(j)). NaN p-values stay NaN and do not count in m.
    Written here because scipy has none (``false_discovery_control`` is Benjamini-Hochberg) and
    statsmodels is not a dependency.
    """
    p = _as_float_array(p_values, "p_values")
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    adjusted = np.full(p.shape, math.nan)
    present = np.flatnonzero(~np.isnan(p))
    m = present.size
    if m == 0:
        return adjusted
    order = present[np.argsort(p[present], kind="stable")]
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted


def minimum_detectable_difference(
    differences: ArrayLike,
    n: int | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """The smallest true mean paired difference that ``n`` paired seeds detect with ``power``.

    From the sample sd s of the observed paired ``differences`` (NaN left out), for the two-sided
    paired t-test at level ``alpha`` with df = n - 1 and t_c = t.ppf(1 - alpha/2, df): the result is
    delta = lambda * s / sqrt(n), where the noncentrality lambda solves
    ``nct.sf(t_c, df, lambda) + nct.cdf(-t_c, df, lambda) = power`` (scipy.stats.nct). It is close to
    (t_c + t.ppf(power, df)) * s / sqrt(n). ``n`` defaults to the number of differences. The t-test's
    power stands in for the sign-flip test's; that test cannot reach p < alpha at all when
    2 / 2**n > alpha. Pass alpha / m for a Holm family of m comparisons (its first step). NaN when
    n < 2 or s is undefined; 0.0 when s is 0.
    """
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be between 0 and 1, got {alpha} and {power}")
    array = _as_float_array(differences, "differences")
    array = array[~np.isnan(array)]
    n = int(array.size) if n is None else int(n)
    if n < 2 or array.size < 2:
        return math.nan
    sd = float(np.std(array, ddof=1))
    if sd == 0:
        return 0.0
    df = n - 1
    t_critical = float(stats.t.ppf(1 - alpha / 2, df))

    def power_gap(noncentrality: float) -> float:
        reached = float(stats.nct.sf(t_critical, df, noncentrality) + stats.nct.cdf(-t_critical, df, noncentrality))
        if not math.isfinite(reached):
            raise ValueError("the noncentral t is NaN here")
        return reached - power

    approximation = t_critical + float(stats.t.ppf(power, df))
    try:
        upper = t_critical + float(stats.norm.ppf(power)) + 1.0
        while power_gap(upper) < 0:
            upper *= 2
        noncentrality = optimize.brentq(power_gap, 0.0, upper, xtol=1e-12)
    except ValueError:  # nct gives NaN far in the tail (1 degree of freedom, a tiny alpha): the approximation
        noncentrality = approximation
    return noncentrality * sd / math.sqrt(n)
