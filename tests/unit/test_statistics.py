"""pipeline.statistics against hand-computed answers (arithmetic in the comments) or scipy directly."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from pipeline.statistics import (
    ConditionalComparison,
    conditional_comparison,
    fisher_exact_p_value,
    holm,
    mean_interval,
    minimum_detectable_difference,
    outcomes,
    paired_comparison,
    reliability,
    trained,
    trained_from,
)

# Five seeds; the variant's seed 3 (index 2) collapsed to chance on a 10-class problem.
VARIANT = np.array([0.80, 0.81, 0.10, 0.79, 0.82])
BASELINE = np.array([0.80, 0.80, 0.80, 0.79, 0.81])
Z95 = 1.959963984540054  # norm.ppf(0.975)


def sign_flip_p_value(differences_in_hundredths: list[int]) -> float:
    """Exact two-sided sign-flip p-value by enumeration: the share of the 2**n sign patterns whose
    |sum| is at least the observed |sum|. Integers, so no float ties go astray."""
    observed = abs(sum(differences_in_hundredths))
    patterns = list(itertools.product((1, -1), repeat=len(differences_in_hundredths)))
    extreme = sum(
        abs(sum(s * d for s, d in zip(signs, differences_in_hundredths, strict=True))) >= observed for signs in patterns
    )
    return extreme / len(patterns)


def paired_t_p_value(differences: np.ndarray) -> float:
    """Paired t-test by hand: t = mean / (sd / sqrt(n)), p = 2 * P(T_{n-1} > |t|)."""
    n = len(differences)
    t = differences.mean() / (differences.std(ddof=1) / math.sqrt(n))
    return float(2 * stats.t.sf(abs(t), n - 1))


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --- trained / reliability ----------------------------------------------------------------------


def test_trained_is_at_least_half_right_and_a_run_between_chance_and_that_stalled():
    # 10 classes: died below 1.5 / 10 = 0.15, trained from 0.5, stalled in between
    flags = trained([0.80, 0.10, 0.15, 0.1499, 0.4999, 0.50, math.nan], num_classes=10)
    assert flags.dtype == bool
    assert flags.tolist() == [True, False, False, False, False, True, False]
    assert outcomes([0.80, 0.10, 0.15, 0.1499, 0.4999, 0.50, math.nan], 10).tolist() == [
        "trained",
        "died",
        "stalled",
        "died",
        "stalled",
        "trained",
        "died",
    ]
    assert trained(VARIANT, 10).tolist() == [True, True, False, True, True]
    # 2 classes: 1.5x chance (0.75) is above 0.5, so it is the line, and no run can stall
    assert trained([0.74, 0.75], num_classes=2).tolist() == [False, True]
    assert outcomes([0.74, 0.75], 2).tolist() == ["died", "trained"]
    assert trained_from(10) == 0.5 and trained_from(2) == 0.75


def test_trained_rejects_fewer_than_two_classes():
    with pytest.raises(ValueError, match="num_classes"):
        trained([0.5], num_classes=1)


def test_reliability_four_of_five_with_wilson_interval_by_hand():
    # Wilson: centre = (p + z^2/(2n)) / (1 + z^2/n), half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/(4n^2))
    # p = 0.8, n = 5, z^2 = 3.841459: centre = 1.184146 / 1.768292 = 0.669655,
    # half = 1.959964 * sqrt(0.032 + 0.038415) / 1.768292 = 0.294121 -> [0.375535, 0.963776]
    n, p, z2 = 5, 0.8, Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n**2))
    result = reliability(trained(VARIANT, 10))
    assert (result.k, result.n, result.share) == (4, 5, 0.8)
    assert result.low == pytest.approx(centre - half, abs=1e-9)
    assert result.high == pytest.approx(centre + half, abs=1e-9)
    assert result.low == pytest.approx(0.375535, abs=1e-6)
    assert result.high == pytest.approx(0.963776, abs=1e-6)


def test_reliability_at_the_edges():
    # Wilson at k = 0: high = (z^2/n) / (1 + z^2/n) = 0.768292 / 1.768292 = 0.434482
    none = reliability([False] * 5)
    assert (none.share, none.low, none.k) == (0.0, 0.0, 0)
    assert none.high == pytest.approx(0.434482, abs=1e-6)
    # Clopper-Pearson at k = n: low = (alpha/2)^(1/n) = 0.025^(1/5) = 0.478176
    every = reliability([True] * 5, method="exact")
    assert (every.share, every.high) == (1.0, 1.0)
    assert every.low == pytest.approx(0.025 ** (1 / 5), abs=1e-9)
    empty = reliability([])
    assert empty.n == 0 and math.isnan(empty.share) and math.isnan(empty.low) and math.isnan(empty.high)


# --- fisher_exact_p_value -----------------------------------------------------------------------


def test_fisher_three_dead_of_ten_against_none_by_hand():
    # 7/10 trained against 10/10: 3 dead runs among 20, 10 per variant. Hypergeometric P(X = x dead in the
    # variant) = C(10, x) C(10, 3 - x) / C(20, 3), C(20, 3) = 1140: x = 0..3 -> 120, 450, 450, 120 (/1140).
    # Two-sided: every table no more likely than the observed x = 3, i.e. x = 3 and x = 0: 240/1140.
    assert math.comb(20, 3) == 1140
    assert fisher_exact_p_value(7, 10, 10, 10) == pytest.approx(240 / 1140)
    assert fisher_exact_p_value(7, 10, 10, 10) == pytest.approx(0.2105, abs=5e-5)
    assert fisher_exact_p_value(10, 10, 7, 10) == fisher_exact_p_value(7, 10, 10, 10)  # symmetric


def test_fisher_at_the_extremes_by_hand():
    # 0/10 against 10/10: only the two most extreme tables, each 1 / C(20, 10) = 1 / 184,756
    assert fisher_exact_p_value(0, 10, 10, 10) == pytest.approx(2 / math.comb(20, 10))
    assert fisher_exact_p_value(5, 10, 5, 10) == 1.0  # the same share: nothing to see
    assert fisher_exact_p_value(10, 10, 10, 10) == 1.0


@pytest.mark.parametrize(
    ("k", "n", "reference_k", "reference_n"),
    [(7, 10, 10, 10), (3, 10, 9, 10), (1, 5, 4, 5), (6, 10, 2, 10), (0, 3, 3, 3), (12, 20, 19, 20)],
)
def test_fisher_agrees_with_scipy(k, n, reference_k, reference_n):
    table = [[k, n - k], [reference_k, reference_n - reference_k]]
    expected = stats.fisher_exact(table, alternative="two-sided").pvalue
    assert fisher_exact_p_value(k, n, reference_k, reference_n) == pytest.approx(expected, rel=1e-12)


def test_fisher_without_runs_is_nan_and_impossible_counts_are_errors():
    assert math.isnan(fisher_exact_p_value(0, 0, 5, 10))
    assert math.isnan(fisher_exact_p_value(5, 10, 0, 0))
    with pytest.raises(ValueError, match="0 <= k <= n"):
        fisher_exact_p_value(11, 10, 5, 10)
    with pytest.raises(ValueError, match="reference_k"):
        fisher_exact_p_value(1, 10, -1, 10)


# --- mean_interval ------------------------------------------------------------------------------


def test_mean_interval_stays_within_the_data_and_matches_scipy(no_warnings):
    result = mean_interval(VARIANT, seed=0)
    assert result.n == 5
    assert result.mean == pytest.approx(3.32 / 5)  # (0.80 + 0.81 + 0.10 + 0.79 + 0.82) / 5 = 0.664
    assert VARIANT.min() <= result.low < result.mean < result.high <= VARIANT.max()
    assert result.low >= 0.0 and result.high <= 1.0
    direct = stats.bootstrap(
        (VARIANT,), np.mean, method="percentile", n_resamples=9_999, rng=np.random.default_rng(0)
    ).confidence_interval
    assert (result.low, result.high) == pytest.approx((direct.low, direct.high))
    assert mean_interval(VARIANT, seed=0) == result  # deterministic for a seed


def test_mean_interval_degenerate_cases(no_warnings):
    constant = mean_interval([0.1] * 5)
    assert (constant.mean, constant.low, constant.high, constant.n) == (0.1, 0.1, 0.1, 5)
    single = mean_interval([0.7])
    assert single.mean == 0.7 and single.n == 1 and math.isnan(single.low) and math.isnan(single.high)
    empty = mean_interval([])
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.low)
    with_nan = mean_interval([0.8, math.nan, 0.6])
    assert with_nan.n == 2 and with_nan.mean == pytest.approx(0.7)
    assert 0.6 <= with_nan.low <= with_nan.high <= 0.8


def test_mean_interval_of_bimodal_accuracies_never_leaves_zero_one():
    # mostly dead runs at chance and two at 0.99: a t interval would leave [0, 1], the bootstrap cannot
    values = np.array([0.10, 0.10, 0.99, 0.10, 0.99, 0.10])
    result = mean_interval(values, seed=3)
    assert 0.10 <= result.low <= result.high <= 0.99
    t_half = stats.t.ppf(0.975, 5) * values.std(ddof=1) / math.sqrt(6)
    assert values.mean() - t_half < 0.10  # the t interval reaches below every observed value


# --- paired_comparison --------------------------------------------------------------------------


def test_paired_comparison_with_a_collapsed_run(no_warnings):
    # differences in hundredths: [0, 1, -70, 0, 1]; |sum| = 68 and 70 - 1 - 1 = 68, so every one of
    # the 32 sign flips is as extreme: p = 32/32 = 1.0
    result = paired_comparison(VARIANT, BASELINE)
    differences = VARIANT - BASELINE
    assert result.n == 5
    assert result.mean_difference == pytest.approx(-0.136)  # -0.68 / 5
    assert sign_flip_p_value([0, 1, -70, 0, 1]) == 1.0
    assert result.p_value == pytest.approx(1.0)
    assert result.permutation_exact
    assert result.p_value_ttest == pytest.approx(paired_t_p_value(differences))
    assert result.p_value_ttest == pytest.approx(stats.ttest_rel(VARIANT, BASELINE).pvalue)
    assert result.smallest_possible_p_value == pytest.approx(2 / 2**3)  # three non-zero differences
    assert differences.min() <= result.ci_low <= result.mean_difference <= result.ci_high <= differences.max()
    assert result.note == ""


def test_paired_comparison_exact_sign_flip_p_value_by_enumeration(no_warnings):
    # six seeds, differences in hundredths [2, 3, 1, 4, -1, 2], sum 11: the patterns with |sum| >= 11
    # flip a subset of signed sum <= 0 ({}, {-1}, {-1, 1}) or its complement: 6 of 64 = 0.09375
    hundredths = [2, 3, 1, 4, -1, 2]
    baseline = np.array([0.70, 0.72, 0.71, 0.69, 0.73, 0.70])
    variant = baseline + np.array(hundredths) / 100
    result = paired_comparison(variant, baseline)
    assert sign_flip_p_value(hundredths) == pytest.approx(6 / 64)
    assert result.p_value == pytest.approx(6 / 64)
    assert result.p_value_ttest == pytest.approx(paired_t_p_value(variant - baseline))
    assert result.mean_difference == pytest.approx(0.11 / 6)
    assert result.smallest_possible_p_value == pytest.approx(2 / 64)
    assert -0.01 <= result.ci_low < result.mean_difference < result.ci_high <= 0.04


def test_paired_comparison_is_symmetric_in_sign():
    forward = paired_comparison(VARIANT, BASELINE)
    backward = paired_comparison(BASELINE, VARIANT)
    assert backward.mean_difference == pytest.approx(-forward.mean_difference)
    assert backward.p_value == pytest.approx(forward.p_value)
    assert backward.p_value_ttest == pytest.approx(forward.p_value_ttest)


def test_paired_comparison_beyond_the_exact_limit_uses_random_sign_flips_deterministically():
    rng = np.random.default_rng(1)
    baseline = rng.uniform(0.85, 0.9, size=20)
    variant = baseline + rng.normal(0.01, 0.01, size=20)
    result = paired_comparison(variant, baseline, seed=5)
    assert not result.permutation_exact
    assert "random sign flips" in result.note
    direct = stats.permutation_test(
        (variant, baseline),
        lambda a, b, axis: np.mean(a - b, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=99_999,
        rng=np.random.default_rng(5),
    )
    assert result.p_value == pytest.approx(direct.pvalue)
    assert paired_comparison(variant, baseline, seed=5) == result


def test_paired_comparison_all_differences_zero(no_warnings):
    result = paired_comparison(BASELINE, BASELINE.copy())
    assert (result.n, result.mean_difference, result.ci_low, result.ci_high) == (5, 0.0, 0.0, 0.0)
    assert (result.p_value, result.p_value_ttest) == (1.0, 1.0)
    assert "identical" in result.note


def test_paired_comparison_too_few_pairs(no_warnings):
    one = paired_comparison([0.8], [0.7])
    assert one.n == 1 and one.mean_difference == pytest.approx(0.1)
    assert math.isnan(one.p_value) and math.isnan(one.p_value_ttest) and math.isnan(one.ci_low)
    assert "too few" in one.note
    none = paired_comparison([], [])
    assert none.n == 0 and math.isnan(none.mean_difference) and math.isnan(none.p_value)


def test_paired_comparison_constant_nonzero_differences(no_warnings):
    # every seed +0.5: the t statistic is infinite (p = 0); the sign-flip test gives 2/32
    result = paired_comparison([1.0, 1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5, 0.5])
    assert (result.mean_difference, result.ci_low, result.ci_high) == (0.5, 0.5, 0.5)
    assert result.p_value == pytest.approx(2 / 32)
    assert result.p_value_ttest == 0.0


def test_paired_comparison_leaves_out_pairs_with_a_missing_value(no_warnings):
    result = paired_comparison([0.8, math.nan, 0.9, 0.7], [0.7, 0.8, math.nan, 0.6])
    assert result.n == 2
    assert result.mean_difference == pytest.approx(0.1)
    assert "2 pair(s) with a missing value" in result.note


def test_paired_comparison_rejects_unpaired_lengths():
    with pytest.raises(ValueError, match="pair up"):
        paired_comparison([0.8, 0.7], [0.8])


# --- conditional_comparison ---------------------------------------------------------------------


def test_conditional_comparison_drops_the_seed_that_did_not_train(no_warnings):
    # seed 3 (index 2) collapsed: kept differences in hundredths [0, 1, 0, 1] -> mean 0.005;
    # sign flips: the zeros do not matter, |±1 ±1| >= 2 in 2 of 4 patterns: p = 8/16 = 0.5
    result = conditional_comparison(VARIANT, BASELINE, num_classes=10)
    assert isinstance(result, ConditionalComparison)
    assert result.kept == (True, True, False, True, True)
    assert (result.n, result.n_total) == (4, 5)
    assert result.mean_difference == pytest.approx(0.005)
    assert sign_flip_p_value([0, 1, 0, 1]) == 0.5
    assert result.p_value == pytest.approx(0.5)
    # t = 0.005 / (0.0057735 / 2) = sqrt(3)
    assert result.p_value_ttest == pytest.approx(2 * stats.t.sf(math.sqrt(3), 3))
    assert 0.0 <= result.ci_low <= result.ci_high <= 0.01
    assert result.note.startswith("conditional on training: 1 pair(s)")


def test_conditional_comparison_drops_pairs_where_the_baseline_died():
    result = conditional_comparison([0.8, 0.8, 0.9], [0.1, 0.7, 0.7], num_classes=10)
    assert result.kept == (False, True, True)
    assert result.n == 2 and result.mean_difference == pytest.approx(0.15)


# --- holm ---------------------------------------------------------------------------------------


def test_holm_by_hand():
    # sorted: 0.01 * 4 = 0.04, 0.03 * 3 = 0.09, 0.04 * 2 = 0.08 -> max(0.09, 0.08) = 0.09, 0.20 * 1 = 0.20
    assert holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])


def test_holm_over_seven_comparisons_by_hand():
    # a family of 7, as docs/results.md has: sorted 0.002, 0.0137, 0.0433, 0.087, 0.211, 0.5, 1.0
    # times 7..1: 0.014, 0.0822, 0.2165, 0.348, 0.633, 1.0 (capped), 1.0; already monotone
    p = [0.0137, 0.002, 0.211, 0.5, 0.0433, 1.0, 0.087]
    assert holm(p) == pytest.approx([0.0822, 0.014, 0.633, 1.0, 0.2165, 1.0, 0.348])
    # a step-down that needs the running maximum: 0.01 * 3 = 0.03, 0.011 * 2 = 0.022 -> 0.03, 0.9
    assert holm([0.011, 0.9, 0.01]) == pytest.approx([0.03, 0.9, 0.03])


def test_holm_leaves_nan_out_of_m():
    adjusted = holm([0.01, math.nan, 0.04, 0.03, 0.20])
    assert math.isnan(adjusted[1])
    assert adjusted[[0, 2, 3, 4]] == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert np.isnan(holm([math.nan, math.nan])).all()
    assert holm([]).size == 0


def test_holm_caps_at_one_and_stays_monotone():
    # 0.5 * 2 = 1.0, then max(1.0, 0.6 * 1) = 1.0
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])
    # 0.02 * 2 = 0.04, 0.3 * 1 = 0.3
    assert holm([0.3, 0.02]) == pytest.approx([0.3, 0.04])
    assert holm([0.01, 0.01]) == pytest.approx([0.02, 0.02])
    assert holm([0.2]) == pytest.approx([0.2])


def test_holm_rejects_values_outside_zero_one():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, 1.5])


# --- minimum_detectable_difference --------------------------------------------------------------


def test_minimum_detectable_difference_reaches_the_power():
    # differences [0.01, 0.03, -0.01, 0.02, 0.00]: mean 0.01, squared deviations sum to 0.001,
    # sd = sqrt(0.001 / 4) = 0.0158114
    differences = [0.01, 0.03, -0.01, 0.02, 0.00]
    sd = math.sqrt(0.001 / 4)
    delta = minimum_detectable_difference(differences, n=5)
    # the power of the two-sided paired t-test at delta is 0.8: noncentrality delta * sqrt(n) / sd
    t_c = stats.t.ppf(0.975, 4)  # 2.776445
    lam = delta * math.sqrt(5) / sd
    assert stats.nct.sf(t_c, 4, lam) + stats.nct.cdf(-t_c, 4, lam) == pytest.approx(0.8, abs=1e-9)
    # near the approximation (t_c + t_0.8) * sd / sqrt(n) = (2.776445 + 0.940965) * 0.0158114 / 2.236068
    assert delta == pytest.approx((2.776445 + 0.940965) * sd / math.sqrt(5), rel=0.05)
    assert minimum_detectable_difference(differences) == pytest.approx(delta)  # n defaults to 5


def test_minimum_detectable_difference_tends_to_the_normal_formula():
    # large n: delta -> (z_0.975 + z_0.8) * sd / sqrt(n) = (1.959964 + 0.841621) * 0.0158114 / 100
    differences = [0.01, 0.03, -0.01, 0.02, 0.00]
    delta = minimum_detectable_difference(differences, n=10_000)
    assert delta == pytest.approx((1.959964 + 0.841621) * math.sqrt(0.001 / 4) / 100, rel=1e-3)


def test_minimum_detectable_difference_shrinks_with_more_seeds_and_grows_with_stricter_alpha():
    differences = [0.01, 0.03, -0.01, 0.02, 0.00]
    three, ten = (minimum_detectable_difference(differences, n=k) for k in (3, 10))
    assert three > ten > 0
    assert minimum_detectable_difference(differences, n=10, alpha=0.01) > ten


def test_minimum_detectable_difference_degenerate_cases():
    assert math.isnan(minimum_detectable_difference([0.01, 0.02], n=1))
    assert math.isnan(minimum_detectable_difference([0.01], n=5))
    assert math.isnan(minimum_detectable_difference([math.nan, math.nan], n=5))
    assert minimum_detectable_difference([0.01, 0.01, 0.01], n=3) == 0.0


def test_mdd_with_one_degree_of_freedom_and_a_holm_alpha_is_finite():
    """With 1 degree of freedom and alpha 0.05/4, scipy's noncentral t gives NaN in parts of the tail
    (it failed the compare stage of a 2-seed pipeline once): the result must still be a number, at
    least the approximation's order, never an exception."""
    from scipy import stats

    diffs = [0.01, 0.03]
    for alpha in (0.05 / 4, 0.05 / 5, 0.05 / 7, 0.01):
        sd, t_c = np.std(diffs, ddof=1), stats.t.ppf(1 - alpha / 2, 1)
        approximation = (t_c + stats.t.ppf(0.8, 1)) * sd / np.sqrt(2)
        result = minimum_detectable_difference(diffs, alpha=alpha)
        assert math.isfinite(result)
        assert approximation * 0.9 <= result <= approximation * 2
