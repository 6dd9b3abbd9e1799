"""The report's numbers against values worked out by hand (arithmetic in the comments) or with scipy
directly. pipeline.statistics has its own tests; here the summary's wiring and its cells are checked."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from support import ROOT

from pipeline.errors import DataError
from pipeline.pooled import curve_table, learning_curves, run_curves
from pipeline.reporting import build_report, summary_metrics
from pipeline.summary_numbers import RUN_COLUMNS, runs_table, summarize
from pipeline.summary_text import summary_markdown

NUM_CLASSES = 10  # a run trained when its test accuracy is at least 1.5 / 10 = 0.15


def record(variant: str, seed: int, accuracy: float, **overrides) -> dict:
    values = {
        "variant": variant,
        "seed": seed,
        "test_accuracy": accuracy,
        "test_loss": 0.3,
        "val_accuracy": accuracy,
        "train_seconds": 100.0 + seed,
        "trace_seconds": 2.0,
        "train_images_per_second": 12345.6,
        "inference_images_per_second": 54321.0,
        "trainable_params": 123456,
        "flops_per_image": 9876543,
        "peak_memory_mb": 500.0 + seed,
        "run_id": f"{variant}-{seed}",
    }
    return values | overrides


def runs(**variants: dict[int, float]) -> pd.DataFrame:
    return runs_table([record(name, seed, acc) for name, accs in variants.items() for seed, acc in accs.items()])


def percent(values: list[int], first_seed: int = 1) -> dict[int, float]:
    """Accuracies given in whole percent, one per seed from first_seed on."""
    return {seed: value / 100 for seed, value in enumerate(values, start=first_seed)}


def row(summary: pd.DataFrame, variant: str) -> pd.Series:
    return summary.set_index("variant").loc[variant]


def sign_flip_p_by_hand(differences: list[int]) -> float:
    """Exact two-sided sign-flip p by enumerating all 2**n sign flips: the share whose |sum| reaches the
    observed |sum|. The differences are integers (pp), so ties are exact."""
    observed = abs(sum(differences))
    flips = list(itertools.product((1, -1), repeat=len(differences)))
    extreme = sum(abs(sum(s * d for s, d in zip(signs, differences, strict=True))) >= observed for signs in flips)
    return extreme / len(flips)


def wilson_by_formula(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval: (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    z = stats.norm.ppf(1 - (1 - confidence) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, min(centre + half, 1.0)


def power_of_paired_t(delta: float, sd: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test at level alpha for a true mean difference delta (scipy nct)."""
    df = n - 1
    t_critical = stats.t.ppf(1 - alpha / 2, df)
    noncentrality = delta / (sd / math.sqrt(n))
    return stats.nct.sf(t_critical, df, noncentrality) + stats.nct.cdf(-t_critical, df, noncentrality)


def holm_by_hand(p_values: list[float]) -> list[float]:
    """Holm step-down: sort ascending, multiply the i-th smallest (from 0) by m - i, cap at 1, running max."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


COMPARISON_COLUMNS = [
    "diff_vs_baseline_mean",
    "diff_ci_low",
    "diff_ci_high",
    "p_value",
    "p_value_ttest",
    "p_value_adjusted",
    "smallest_possible_p_value",
    "min_detectable_diff",
    "trained_pairs",
    "trained_diff_mean",
    "trained_diff_ci_low",
    "trained_diff_ci_high",
    "trained_p_value_adjusted",
]


# --- runs_table ------------------------------------------------------------------------------


def test_runs_table_columns_order_and_types():
    records = [
        record("transposed", 2, 0.94),
        record("baseline", 3, 0.91),
        record("transposed", 1, 0.91, extra_key="ignored"),
        record("baseline", 1, 0.90),
    ]
    table = runs_table(records)
    assert list(table.columns) == RUN_COLUMNS
    # with the number of classes, whether each run trained (test accuracy at least 1.5x chance)
    marked = runs_table([*records, record("dead", 1, 0.1)], num_classes=NUM_CLASSES)
    assert list(marked.columns) == [*RUN_COLUMNS, "trained"]
    assert marked["trained"].tolist() == [True, True, True, True, False]
    # first-seen variant order, seeds ascending within a variant
    assert list(zip(table["variant"], table["seed"], strict=True)) == [
        ("transposed", 1),
        ("transposed", 2),
        ("baseline", 1),
        ("baseline", 3),
    ]
    assert table["seed"].dtype == np.int64
    assert table["trainable_params"].dtype == np.int64
    assert table["test_accuracy"].tolist() == [0.91, 0.94, 0.90, 0.91]

    ordered = runs_table(records, variant_order=["baseline", "transposed"])
    assert ordered["variant"].tolist() == ["baseline", "baseline", "transposed", "transposed"]
    # variants the order does not name come after, in first-seen order
    partial = runs_table([*records, record("deep", 1, 0.95)], variant_order=["baseline"])
    assert partial["variant"].drop_duplicates().tolist() == ["baseline", "transposed", "deep"]


def test_runs_table_missing_key_names_key_and_run():
    bad = record("transposed", 2, 0.94)
    del bad["flops_per_image"]
    with pytest.raises(DataError, match=r"transposed/seed-2.*'flops_per_image'"):
        runs_table([record("baseline", 1, 0.9), bad])


def test_runs_table_rejects_duplicate_runs():
    with pytest.raises(DataError, match="baseline/seed-1"):
        runs_table([record("baseline", 1, 0.9), record("baseline", 1, 0.91)])


# --- summarize: a variant with a collapsed run ---------------------------------------------------

# Five paired seeds. The variant's seed 2 collapsed to chance (10%); its other seeds are near the baseline.
BASE5 = [90, 91, 89, 92, 90]
COLLAPSED = [92, 10, 88, 95, 91]
COLLAPSED_DIFFS = [2, -81, -1, 3, 1]  # pp, variant - baseline by seed; sum -76, mean -15.2 pp


def collapsed_summary(**kwargs) -> pd.DataFrame:
    return summarize(runs(baseline=percent(BASE5), collapsed=percent(COLLAPSED)), NUM_CLASSES, **kwargs)


def test_collapsed_run_reliability_accuracy_and_paired_comparison():
    summary = collapsed_summary()
    assert summary["variant"].tolist() == ["baseline", "collapsed"]
    c = row(summary, "collapsed")
    variant = np.array(COLLAPSED) / 100
    baseline = np.array(BASE5) / 100

    # reliability: 4 of 5 runs reached 0.15; Wilson with z = 1.959964:
    # centre = (0.8 + 3.8415/10) / (1 + 3.8415/5) = 0.6697, half = 1.1084 * sqrt(0.032 + 0.0384) = 0.2941
    assert c["n_seeds"] == 5
    assert c["trained_runs"] == 4
    assert c["trained_share"] == pytest.approx(0.8)
    low, high = wilson_by_formula(4, 5)
    assert (low, high) == pytest.approx((0.3755, 0.9638), abs=1e-4)
    assert c["trained_share_ci_low"] == pytest.approx(low, rel=1e-9)
    assert c["trained_share_ci_high"] == pytest.approx(high, rel=1e-9)

    # accuracy: mean 3.76 / 5 = 0.752, sample sd over all five runs (the collapsed one included)
    assert c["test_accuracy_mean"] == pytest.approx(0.752)
    assert c["test_accuracy_std"] == pytest.approx(variant.std(ddof=1))
    # the percentile bootstrap stays within the data's range, never a t interval like [0.36, 1.14]
    assert 0.10 <= c["test_accuracy_ci_low"] <= c["test_accuracy_mean"] <= c["test_accuracy_ci_high"] <= 0.95
    # its 2.5% point falls among resamples with three copies of 0.10 (P(>= 4) = 0.7%, P(>= 3) = 5.8%):
    # (0.30 + two of 0.88..0.95) / 5 lies in [0.412, 0.44]; its 97.5% point among resamples with no 0.10
    # (P = 0.8^5 = 33%), above their mean 0.915 and at most 0.95
    assert 0.412 - 1e-9 <= c["test_accuracy_ci_low"] <= 0.44 + 1e-9
    assert 0.915 < c["test_accuracy_ci_high"] <= 0.95

    # paired comparison over the five seeds: mean difference -0.76 / 5 = -0.152
    assert c["n_paired_seeds"] == 5
    assert c["diff_vs_baseline_mean"] == pytest.approx(-0.152)
    assert -0.81 <= c["diff_ci_low"] <= c["diff_vs_baseline_mean"] <= c["diff_ci_high"] <= 0.03
    # same reasoning on the differences: low end among resamples with three copies of -0.81
    assert (3 * -81 + 2 * -1) / 500 - 1e-9 <= c["diff_ci_low"] <= (3 * -81 + 2 * 3) / 500 + 1e-9

    # sign-flip: with the -81 flipped to the observed sign, the other four sum to y in [-7, 7] and
    # |-81 + y| >= 76 unless y = 7 (all four positive) -> 15 of 16, twice -> 30/32 (y = 5 ties, counted)
    assert sign_flip_p_by_hand(COLLAPSED_DIFFS) == 30 / 32
    assert c["p_value"] == pytest.approx(30 / 32, rel=1e-12)
    assert c["p_value_ttest"] == pytest.approx(stats.ttest_rel(variant, baseline).pvalue, rel=1e-9)
    assert c["p_value_adjusted"] == pytest.approx(30 / 32, rel=1e-12)  # one comparison: Holm is the identity
    assert not c["significant"]
    assert c["smallest_possible_p_value"] == pytest.approx(2 / 2**5)  # 0.0625 > 0.05: 5 seeds never suffice

    # power: the paired t-test at 0.05 has 80% power at min_detectable_diff, less just below it
    sd = (variant - baseline).std(ddof=1)
    mdd = c["min_detectable_diff"]
    assert power_of_paired_t(mdd, sd, 5, 0.05) == pytest.approx(0.8, abs=1e-6)
    assert power_of_paired_t(0.95 * mdd, sd, 5, 0.05) < 0.78

    # conditional on training: seed 2 left out -> diffs [2, -1, 3, 1], mean 5 / 4 = 1.25 pp;
    # |sum| >= 5 of at most 7: none, or one of the two 1s flipped -> 3 patterns, twice -> 6/16
    assert c["trained_pairs"] == 4
    assert c["trained_diff_mean"] == pytest.approx(0.0125)
    assert -0.01 <= c["trained_diff_ci_low"] <= 0.0125 <= c["trained_diff_ci_high"] <= 0.03
    assert sign_flip_p_by_hand([2, -1, 3, 1]) == 6 / 16
    assert c["trained_p_value_adjusted"] == pytest.approx(6 / 16, rel=1e-12)

    assert c["verdict"].startswith(
        "-15.20 pp vs baseline, not significant (Holm-adjusted p=0.94 over the 1 comparison with baseline;"
        " sign-flip p=0.94,"
    )
    assert f"t-test p={c['p_value_ttest']:.2g}, 5 paired seeds" in c["verdict"]
    assert c["verdict"].endswith("; 5 seeds cannot reach significance here, whatever the difference)")
    assert summary.attrs == {"confidence": 0.95, "baseline": "baseline", "comparisons": 1, "compared": ["collapsed"]}


def test_baseline_row_is_the_reference():
    base = row(collapsed_summary(), "baseline")
    assert base["verdict"] == "reference"
    assert not base["significant"]
    assert base["n_paired_seeds"] == 5
    for column in COMPARISON_COLUMNS:
        assert math.isnan(base[column]), column
    # its own reliability and accuracy: 5/5 trained, Wilson [0.5655, 1]; mean 4.52 / 5 = 0.904,
    # deviations -0.4, 0.6, -1.4, 1.6, -0.4 pp -> sd = sqrt(5.2 / 4) = 1.1402 pp
    assert base["trained_runs"] == 5 and base["trained_share"] == 1.0
    assert (base["trained_share_ci_low"], base["trained_share_ci_high"]) == pytest.approx(wilson_by_formula(5, 5))
    assert base["trained_share_ci_low"] == pytest.approx(0.5655, abs=1e-4)
    assert base["test_accuracy_mean"] == pytest.approx(0.904)
    assert base["test_accuracy_std"] == pytest.approx(0.011402, abs=1e-6)
    assert 0.89 <= base["test_accuracy_ci_low"] <= 0.904 <= base["test_accuracy_ci_high"] <= 0.92
    # train_seconds 101..105 -> mean 103, sd sqrt(10 / 4) = 1.5811; peak memory max = 500 + 5
    assert base["train_seconds_mean"] == pytest.approx(103.0)
    assert base["train_seconds_std"] == pytest.approx(math.sqrt(2.5))
    assert base["peak_memory_mb_max"] == 505.0
    assert base["trainable_params"] == 123456
    assert base["flops_per_image"] == 9876543


def test_trained_depends_on_the_number_of_classes():
    # 0.60 is 6x chance for 10 classes but below 1.5 x 1/2 = 0.75 for 2 classes
    data = runs(baseline=percent([80, 80, 80, 80, 80]), variant=percent([60, 85, 60, 85, 85]))
    assert row(summarize(data, 10), "variant")["trained_runs"] == 5
    # a runs table with its `trained` column (runs_table with num_classes): the summary reads it, it
    # does not decide again
    assert row(summarize(data.assign(trained=True), 2), "variant")["trained_runs"] == 5
    two = row(summarize(data, 2), "variant")
    assert two["trained_runs"] == 3
    assert two["trained_share"] == pytest.approx(0.6)
    # conditional comparison keeps the three seeds where both reached 0.75: diffs [5, 5, 5] pp
    assert two["trained_pairs"] == 3
    assert two["trained_diff_mean"] == pytest.approx(0.05)


# --- summarize: Holm's adjustment over all comparisons with the baseline --------------------------

# Ten paired seeds, three variants. Differences in pp; each variant's raw sign-flip p is below 0.05.
BASE10 = [88, 90, 89, 91, 87, 90, 92, 89, 88, 90]
HOLM_DIFFS = {
    # listed out of p order, so adjusted values must go back to the right rows
    # magnitudes five 2s and five 1s (15); observed 11 -> flips whose negated magnitudes total <= 2:
    # none 1, one 1: 5, two 1s: 10, one 2: 5 -> 21, twice -> 42/1024 = 0.0410
    "weak": [2, 1, 1, 2, -1, 2, 2, -1, 1, 2],
    # all positive: only the observed pattern and its mirror -> 2/1024 = 0.00195
    "clear": [1, 2, 1, 3, 2, 1, 2, 1, 3, 2],
    # magnitudes two 3s, four 2s, four 1s (18); observed 14 -> negated <= 2: 1 + 4 + 6 + 4 = 15 -> 30/1024
    "borderline": [3, 1, 2, -1, 2, 1, 3, -1, 2, 2],
}
HOLM_RAW = {"weak": 42 / 1024, "clear": 2 / 1024, "borderline": 30 / 1024}
# Holm, m = 3: clear 3 x 2/1024 = 6/1024; borderline max(6, 2 x 30)/1024 = 60/1024 = 0.0586;
# weak max(60, 1 x 42)/1024 = 60/1024: alone 0.041 < 0.05, but the step-down stopped at borderline
HOLM_ADJUSTED = {"weak": 60 / 1024, "clear": 6 / 1024, "borderline": 60 / 1024}


def shifted(base: list[int], diffs: list[int]) -> dict[int, float]:
    """Accuracies of a variant that differs from base by diffs (pp), seed by seed."""
    return percent([b + d for b, d in zip(base, diffs, strict=True)])


def holm_runs() -> pd.DataFrame:
    return runs(baseline=percent(BASE10), **{name: shifted(BASE10, diffs) for name, diffs in HOLM_DIFFS.items()})


def test_fisher_on_trained_counts_by_hand():
    # baseline 10/10 trained; 'some' 7/10 (three at chance), 'none' 0/10, 'all' 10/10
    base = [80, 81, 82, 83, 84, 85, 86, 87, 88, 89]
    summary = summarize(
        runs(
            baseline=percent(base),
            some=percent([10, 10, 10, *base[3:]]),
            none=percent([10] * 10),
            all=percent([b + 1 for b in base]),
        ),
        NUM_CLASSES,
    )
    # 7/10 vs 10/10: C(10, x) C(10, 3 - x) / C(20, 3), x = 3 and x = 0 as extreme: 240 / 1140 = 0.2105
    # 0/10 vs 10/10: the two extreme tables, 2 / C(20, 10); 10/10 vs 10/10: 1
    raw = {"some": 240 / 1140, "none": 2 / math.comb(20, 10), "all": 1.0}
    for name, p in raw.items():
        assert row(summary, name)["trained_p_fisher"] == pytest.approx(p, rel=1e-9), name
    # Holm over the 3 comparisons: 3 x 1.08e-5, then 2 x 0.2105 = 0.421, then 1
    adjusted = {"none": 3 * raw["none"], "some": 2 * raw["some"], "all": 1.0}
    for name, p in adjusted.items():
        assert row(summary, name)["trained_p_fisher_adjusted"] == pytest.approx(p, rel=1e-9), name
    assert math.isnan(row(summary, "baseline")["trained_p_fisher"])


def test_holm_adjustment_across_all_comparisons_by_hand():
    summary = summarize(holm_runs(), NUM_CLASSES)
    assert summary["variant"].tolist() == ["baseline", "weak", "clear", "borderline"]
    assert summary.attrs["comparisons"] == 3
    for name, diffs in HOLM_DIFFS.items():
        r = row(summary, name)
        assert sign_flip_p_by_hand(diffs) == HOLM_RAW[name], name
        assert r["n_paired_seeds"] == 10
        assert r["diff_vs_baseline_mean"] == pytest.approx(sum(diffs) / 1000), name
        assert r["p_value"] == pytest.approx(HOLM_RAW[name], rel=1e-12), name
        assert r["p_value"] < 0.05, name
        assert r["p_value_adjusted"] == pytest.approx(HOLM_ADJUSTED[name], rel=1e-12), name
        assert r["smallest_possible_p_value"] == pytest.approx(2 / 1024)
        variant = (np.array(BASE10) + np.array(diffs)) / 100
        baseline = np.array(BASE10) / 100
        assert r["p_value_ttest"] == pytest.approx(stats.ttest_rel(variant, baseline).pvalue, rel=1e-9), name
        # the detectable difference is for the first Holm step, alpha / m = 0.05 / 3
        mdd = r["min_detectable_diff"]
        assert power_of_paired_t(mdd, (variant - baseline).std(ddof=1), 10, 0.05 / 3) == pytest.approx(0.8, abs=1e-6)
    # wiring: the adjusted column is Holm of the rows' own p-values
    compared = summary.iloc[1:]
    assert compared["p_value_adjusted"].tolist() == pytest.approx(holm_by_hand(compared["p_value"].tolist()))

    # significant follows the adjusted p, not the raw one
    assert summary.set_index("variant")["significant"].to_dict() == {
        "baseline": False,
        "weak": False,
        "clear": True,
        "borderline": False,
    }
    assert row(summary, "clear")["verdict"].startswith(
        "+1.80 pp vs baseline, significant (Holm-adjusted p=0.0059 over the 3 comparisons with baseline;"
        " sign-flip p=0.002,"
    )
    assert row(summary, "borderline")["verdict"].startswith(
        "+1.40 pp vs baseline, not significant (Holm-adjusted p=0.059 over the 3 comparisons with baseline;"
        " sign-flip p=0.029,"
    )
    assert row(summary, "weak")["verdict"].startswith(
        "+1.10 pp vs baseline, not significant (Holm-adjusted p=0.059 over the 3 comparisons with baseline;"
        " sign-flip p=0.041,"
    )
    # 3 x 2/1024 < 0.05: ten seeds can reach significance, so no verdict carries the floor clause
    assert not any("cannot reach significance" in v for v in summary["verdict"])


def test_confidence_level_sets_the_threshold_and_the_intervals():
    # at 90%, alpha = 0.10: 60/1024 = 0.0586 < 0.10, so all three are significant; p-values do not change
    summary = summarize(holm_runs(), NUM_CLASSES, confidence=0.90)
    assert summary.attrs["confidence"] == 0.90
    assert summary["significant"].tolist() == [False, True, True, True]
    assert summary["p_value_adjusted"].iloc[1:].tolist() == pytest.approx([60 / 1024, 6 / 1024, 60 / 1024])
    assert "significant (Holm-adjusted p=0.059" in row(summary, "weak")["verdict"]
    # Wilson at 90% for 10/10 (z = 1.644854): low = 1 / (1 + z^2 / 10) = 0.7871
    low, high = wilson_by_formula(10, 10, confidence=0.90)
    assert low == pytest.approx(0.7871, abs=1e-4) and high == 1.0
    base = row(summary, "baseline")
    assert base["trained_share_ci_low"] == pytest.approx(low, rel=1e-9)
    assert base["trained_share_ci_high"] == pytest.approx(1.0)
    r = row(summary, "clear")
    d = np.array(HOLM_DIFFS["clear"]) / 100
    assert power_of_paired_t(r["min_detectable_diff"], d.std(ddof=1), 10, 0.10 / 3) == pytest.approx(0.8, abs=1e-6)


# --- summarize: pairing by seed and degenerate cases ---------------------------------------------


def test_unpaired_seeds_use_only_common_seeds():
    # baseline seeds 1..6, variant seeds 2..7; common seeds 2..6:
    # baseline [90, 91, 89, 92, 90], variant [91, 93, 88, 95, 92] -> diffs [1, 2, -1, 3, 2] pp, mean 1.4 pp
    # sign flip: magnitudes total 9, observed 7 -> negated total <= 1: none, or one of the two 1s -> 3, x2 = 6/32
    baseline = percent([80, 90, 91, 89, 92, 90])
    variant = percent([91, 93, 88, 95, 92, 20], first_seed=2)
    summary = summarize(runs(baseline=baseline, variant=variant), NUM_CLASSES)
    v = row(summary, "variant")
    assert v["n_seeds"] == 6
    assert v["test_accuracy_mean"] == pytest.approx(4.79 / 6)  # over all its own seeds, seed 7 included
    assert v["n_paired_seeds"] == 5
    assert v["diff_vs_baseline_mean"] == pytest.approx(0.014)
    assert sign_flip_p_by_hand([1, 2, -1, 3, 2]) == 6 / 32
    assert v["p_value"] == pytest.approx(6 / 32, rel=1e-12)
    common_v = np.array([0.91, 0.93, 0.88, 0.95, 0.92])
    common_b = np.array([0.90, 0.91, 0.89, 0.92, 0.90])
    assert v["p_value_ttest"] == pytest.approx(stats.ttest_rel(common_v, common_b).pvalue, rel=1e-9)
    assert -0.01 <= v["diff_ci_low"] <= v["diff_ci_high"] <= 0.03
    assert v["trained_pairs"] == 5  # seed 7 (0.20, trained) has no baseline partner
    assert v["trained_diff_mean"] == pytest.approx(0.014)
    assert v["verdict"].endswith("5 paired seeds; 5 seeds cannot reach significance here, whatever the difference)")


def test_no_common_seed():
    summary = summarize(runs(baseline=percent(BASE5), other=percent(BASE5, first_seed=7)), NUM_CLASSES)
    other = row(summary, "other")
    assert other["n_seeds"] == 5 and other["n_paired_seeds"] == 0
    for column in COMPARISON_COLUMNS:
        if column != "trained_pairs":
            assert math.isnan(other[column]), column
    assert other["trained_pairs"] == 0
    assert not other["significant"]
    assert other["verdict"] == "no seeds in common with baseline, not enough paired seeds to test"
    assert other["trained_runs"] == 5  # its reliability and accuracy are still reported
    assert other["test_accuracy_mean"] == pytest.approx(0.904)


def test_one_seed_gives_nan_spread_and_no_test():
    summary = summarize(runs(baseline=percent(BASE5), single={1: 0.95}), NUM_CLASSES)
    single = row(summary, "single")
    assert single["n_seeds"] == 1
    assert single["test_accuracy_mean"] == pytest.approx(0.95)
    for column in ("test_accuracy_std", "test_accuracy_ci_low", "test_accuracy_ci_high", "train_seconds_std"):
        assert math.isnan(single[column]), column
    # 1/1 trained: Wilson low = 1 / (1 + z^2) = 0.2065
    assert single["trained_share"] == 1.0
    assert single["trained_share_ci_low"] == pytest.approx(1 / (1 + 1.959964**2), abs=1e-6)
    assert single["diff_vs_baseline_mean"] == pytest.approx(0.05)  # 0.95 - 0.90 on seed 1
    for column in ("diff_ci_low", "diff_ci_high", "p_value", "p_value_ttest", "p_value_adjusted"):
        assert math.isnan(single[column]), column
    assert math.isnan(single["min_detectable_diff"])
    assert not single["significant"]
    assert single["verdict"] == "+5.00 pp vs baseline on the only paired seed, not enough paired seeds to test"


def test_identical_runs_have_p_one_and_say_so():
    summary = summarize(runs(baseline=percent(BASE5), copy=percent(BASE5)), NUM_CLASSES)
    copy = row(summary, "copy")
    assert copy["diff_vs_baseline_mean"] == 0.0
    assert (copy["diff_ci_low"], copy["diff_ci_high"]) == (0.0, 0.0)
    assert copy["p_value"] == 1.0 and copy["p_value_ttest"] == 1.0 and copy["p_value_adjusted"] == 1.0
    assert copy["min_detectable_diff"] == 0.0  # no spread at all
    assert not copy["significant"]
    assert copy["trained_pairs"] == 5 and copy["trained_diff_mean"] == 0.0
    assert copy["verdict"] == "+0.00 pp vs baseline, identical to baseline on all 5 paired seeds"


def test_untestable_variants_do_not_count_as_comparisons():
    # Holm leaves a NaN p-value out of m; the verdict, the detectable difference and attrs must agree
    data = runs(
        baseline=percent(BASE10),
        clear=shifted(BASE10, HOLM_DIFFS["clear"]),
        other=percent(BASE5, first_seed=20),
    )
    summary = summarize(data, NUM_CLASSES)
    assert summary.attrs["comparisons"] == 1
    assert summary.attrs["compared"] == ["clear"]  # the Holm family: "other" shares no seed with the baseline
    clear = row(summary, "clear")
    assert clear["p_value_adjusted"] == pytest.approx(2 / 1024, rel=1e-12)  # m = 1: unchanged
    assert "Holm-adjusted p=0.002 over the 1 comparison with baseline" in clear["verdict"]
    d = np.array(HOLM_DIFFS["clear"]) / 100
    assert power_of_paired_t(clear["min_detectable_diff"], d.std(ddof=1), 10, 0.05) == pytest.approx(0.8, abs=1e-6)
    assert math.isnan(row(summary, "other")["p_value_adjusted"])


def test_baseline_absent():
    summary = summarize(runs(transposed=percent(COLLAPSED), deep=percent(BASE5)), NUM_CLASSES)
    assert summary["variant"].tolist() == ["transposed", "deep"]
    for column in COMPARISON_COLUMNS:
        assert summary[column].isna().all(), column
    assert not summary["significant"].any()
    assert summary["n_paired_seeds"].tolist() == [0, 0]
    assert set(summary["verdict"]) == {"no baseline to compare with"}
    # reliability and accuracy do not need a baseline
    assert summary["trained_runs"].tolist() == [4, 5]
    assert summary["test_accuracy_mean"].tolist() == pytest.approx([0.752, 0.904])


def test_summarize_rejects_a_confidence_outside_zero_one():
    with pytest.raises(ValueError, match="confidence"):
        summarize(runs(baseline=percent(BASE5)), NUM_CLASSES, confidence=95)


# --- markdown --------------------------------------------------------------------------------


def markdown_table(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and the body rows of the first Markdown table in text, cells stripped."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return cells[0], cells[2:]  # cells[1] is the alignment row


def bullets(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("- ")]


def test_summary_markdown_table_cells():
    summary = collapsed_summary()
    text = summary_markdown(summary, title="Comparison")
    assert text.startswith("# Comparison\n")
    header, body = markdown_table(text)
    assert header == [
        "variant",
        "params",
        "trained [95% CI, %]",
        "trained: Fisher p (Holm)",
        "test accuracy % [95% CI]",
        "vs baseline, pp [95% CI]",
        "p (Holm)",
        "if both trained: pp [CI] (pairs)",
        "p (Holm), both trained",
        "detectable pp",
        "train s (mean ± sd)",
        "inference img/s",
        "FLOPs/image",
    ]
    base, col = (dict(zip(header, cells, strict=True)) for cells in body)
    b, c = row(summary, "baseline"), row(summary, "collapsed")

    assert base["variant"] == "baseline" and col["variant"] == "collapsed"
    assert base["params"] == col["params"] == "123,456"
    # Wilson 5/5 [0.5655, 1] and 4/5 [0.3755, 0.9638] in whole percent
    assert base["trained [95% CI, %]"] == "5/5 [57, 100]"
    assert col["trained [95% CI, %]"] == "4/5 [38, 96]"
    # 4/5 against 5/5: one dead run among 10, in the variant with probability 5/10; either table is as
    # likely as the other, so the two-sided p is 1
    assert col["trained: Fisher p (Holm)"] == "1 (1)"
    assert base["trained: Fisher p (Holm)"] == "reference"
    # means 0.904 and 0.752 with their bootstrap intervals, in percent to 2 decimals
    pct = "{:.2f}".format
    assert base["test accuracy % [95% CI]"] == (
        f"90.40 [{pct(b['test_accuracy_ci_low'] * 100)}, {pct(b['test_accuracy_ci_high'] * 100)}]"
    )
    assert col["test accuracy % [95% CI]"] == (
        f"75.20 [{pct(c['test_accuracy_ci_low'] * 100)}, {pct(c['test_accuracy_ci_high'] * 100)}]"
    )
    assert re.fullmatch(r"-15\.20 \[-4\d\.\d\d, [+-]\d\.\d\d\]", col["vs baseline, pp [95% CI]"])
    assert col["vs baseline, pp [95% CI]"] == (
        f"-15.20 [{c['diff_ci_low'] * 100:+.2f}, {c['diff_ci_high'] * 100:+.2f}]"
    )
    assert col["p (Holm)"] == "0.938"  # 30/32 to 3 significant digits
    assert col["detectable pp"] == f"{c['min_detectable_diff'] * 100:.1f}"
    assert col["if both trained: pp [CI] (pairs)"] == (
        f"+1.25 [{c['trained_diff_ci_low'] * 100:+.2f}, {c['trained_diff_ci_high'] * 100:+.2f}] (4)"
    )
    assert col["p (Holm), both trained"] == "0.375"  # 6/16, one comparison
    assert base["vs baseline, pp [95% CI]"] == base["if both trained: pp [CI] (pairs)"] == "reference"
    assert base["p (Holm), both trained"] == "n/a"
    assert base["p (Holm)"] == base["detectable pp"] == "n/a"
    assert base["train s (mean ± sd)"] == col["train s (mean ± sd)"] == "103.0 ± 1.6"  # 101..105: sd 1.58
    assert base["inference img/s"] == "54,321"
    assert base["FLOPs/image"] == "9,876,543"
    # machine names stay in the DataFrame (the CSV), not in the Markdown
    assert "test_accuracy_mean" not in text

    # reliability first, then accuracy when both trained beside the all-runs difference
    assert bullets(text) == [
        "- **collapsed**: trained 4/5 against 5/5 (Fisher's exact p = 1, Holm 1: a difference in how often runs"
        f" train is not established); when both trained +1.25 [{c['trained_diff_ci_low'] * 100:+.2f},"
        f" {c['trained_diff_ci_high'] * 100:+.2f}] pp over 4 pairs (Holm p=0.38); over all 5 paired runs -15.20"
        f" [{c['diff_ci_low'] * 100:+.2f}, {c['diff_ci_high'] * 100:+.2f}] pp (Holm p=0.94: not established), a"
        " mean that mixes runs that died with runs that trained."
    ]
    assert "adjusted over the 1 comparison with baseline (collapsed)" in text
    # five non-zero differences: the sign-flip test cannot go below 2 / 2^5 = 0.0625 > 0.05
    assert (
        "With 5 paired seeds the sign-flip test cannot give p below 0.0625, so after Holm's adjustment over"
        " 1 comparison a difference is significant only if p x 1 < 0.05." in text
    )


def test_summary_markdown_verdicts_use_the_holm_adjusted_p():
    summary = summarize(holm_runs(), NUM_CLASSES)
    text = summary_markdown(summary)
    header, body = markdown_table(text)
    holm_cells = {cells[0]: cells[header.index("p (Holm)")] for cells in body}
    # 60/1024 = 0.0586, 6/1024 = 0.00586
    assert holm_cells == {"baseline": "n/a", "weak": "0.0586", "clear": "0.00586", "borderline": "0.0586"}
    lines = bullets(text)
    assert [line.split("**")[1] for line in lines] == ["weak", "clear", "borderline"]
    weak, clear, borderline = lines
    # raw p of weak (0.041) and borderline (0.029) are below 0.05, their adjusted 0.059 are not
    assert weak.startswith("- **weak**: trained 10/10 against 10/10 (the same share); over all 10 paired runs +1.10")
    assert weak.endswith("pp (Holm p=0.059: not established).")
    assert borderline.endswith("pp (Holm p=0.059: not established).")
    assert clear.endswith("pp (Holm p=0.0059: established).")
    assert "+1.80 [" in clear and "+1.40 [" in borderline
    # floor 2 / 2^10 = 0.00195; 3 comparisons
    assert (
        "With 10 paired seeds the sign-flip test cannot give p below 0.00195, so after Holm's adjustment over"
        " 3 comparisons a difference is significant only if p x 3 < 0.05." in text
    )
    assert "adjusted over the 3 comparisons with baseline (weak, clear, borderline)" in text
    assert "over 3 comparisons a difference is significant only" in text


def test_summary_markdown_floor_note_names_the_seeds_that_set_the_floor():
    # baseline has 6 seeds but only 5 are paired with the variant: the floor 2 / 2^5 = 0.0625 is for 5 seeds
    baseline = percent([80, 90, 91, 89, 92, 90])
    variant = percent([91, 93, 88, 95, 92, 20], first_seed=2)
    text = summary_markdown(summarize(runs(baseline=baseline, variant=variant), NUM_CLASSES))
    assert "With 5 paired seeds the sign-flip test cannot give p below 0.0625" in text


def test_summary_markdown_handles_nan_and_missing_baseline():
    text = summary_markdown(summarize(runs(single={1: 0.95}), NUM_CLASSES))
    header, body = markdown_table(text)
    single = dict(zip(header, body[0], strict=True))
    assert single["trained [95% CI, %]"] == "1/1 [21, 100]"  # Wilson 1/1: [0.2065, 1]
    assert single["test accuracy % [95% CI]"] == "95.00"  # one seed: no interval
    assert single["vs baseline, pp [95% CI]"] == single["p (Holm)"] == "n/a"
    assert single["train s (mean ± sd)"] == "101.0"
    assert bullets(text) == ["- **single**: no baseline to compare with"]
    assert "cannot give p below" not in text


# --- summary.json (the DVC metrics) ---------------------------------------------------------


def test_summary_metrics_are_a_few_short_keys_per_variant():
    """What `dvc exp show` and `dvc metrics diff` compare: per variant the mean test accuracy
    (fraction), the paired difference from the baseline (percentage points, as every table gives it),
    the trained share (fraction) and the mean training seconds."""
    summary = collapsed_summary()
    metrics = summary_metrics(summary)
    assert list(metrics) == ["baseline", "collapsed"]
    keys = ["acc", "vs_baseline_pp", "trained_share", "train_seconds"]
    assert all(list(values) == keys for values in metrics.values())
    # baseline: mean 4.52 / 5 = 0.904, 5/5 trained; collapsed: 0.752, -0.152 paired = -15.2 pp, 4/5
    # trained; train_seconds 101..105 for both -> 103
    assert metrics["baseline"]["acc"] == pytest.approx(0.904)
    assert math.isnan(metrics["baseline"]["vs_baseline_pp"])  # the reference: null in summary.json
    assert metrics["baseline"]["trained_share"] == 1.0
    assert metrics["collapsed"] == pytest.approx(
        {"acc": 0.752, "vs_baseline_pp": -15.2, "trained_share": 0.8, "train_seconds": 103.0}
    )
    # the very numbers of summary.csv (the difference times 100), as plain Python numbers json can write
    for variant, values in metrics.items():
        assert values["acc"] == row(summary, variant)["test_accuracy_mean"]
        assert values["train_seconds"] == row(summary, variant)["train_seconds_mean"]
        assert all(type(v) is float for v in values.values())
    assert metrics["collapsed"]["vs_baseline_pp"] == 100 * row(summary, "collapsed")["diff_vs_baseline_mean"]
    # in the same points as the Markdown table's "vs baseline, pp" cell
    header, body = markdown_table(summary_markdown(summary))
    cell = dict(zip(header, body[1], strict=True))["vs baseline, pp [95% CI]"]
    assert cell.startswith(f"{metrics['collapsed']['vs_baseline_pp']:+.2f} ")


def test_summary_json_has_null_for_the_baselines_own_difference(tmp_path):
    from pipeline.artifacts import read_json, write_json

    write_json(tmp_path / "summary.json", summary_metrics(collapsed_summary()))
    written = read_json(tmp_path / "summary.json")
    assert written["baseline"]["vs_baseline_pp"] is None
    assert written["collapsed"]["vs_baseline_pp"] == pytest.approx(-15.2)


# --- learning curves -------------------------------------------------------------------------


def test_learning_curves_by_hand():
    histories = {
        ("a", 1): pd.DataFrame({"step": [0, 100, 200], "val_accuracy": [0.5, 0.7, 0.9]}),
        ("a", 2): pd.DataFrame({"step": [0, 100, 200], "val_accuracy": [0.3, np.nan, 0.8], "loss": 1.0}),
        ("a", 3): pd.DataFrame({"step": [0, 100, 200], "val_accuracy": [0.1, 0.1, 0.1]}),  # did not train
        ("b", 1): pd.DataFrame({"step": [0, 100], "val_accuracy": [0.2, 0.4]}),
        ("c", 1): pd.DataFrame({"step": [0, 100], "val_accuracy": [0.1, 0.1]}),  # did not train: no rows
    }
    trained = {("a", 3): False, ("c", 1): False}  # a run it does not name counts as trained
    curves = learning_curves(run_curves(histories, "val_accuracy"), trained)
    assert list(curves.columns) == ["variant", "step", "mean", "std", "low", "high", "n"]
    assert list(zip(curves["variant"], curves["step"], strict=True)) == [
        ("a", 0),
        ("a", 100),
        ("a", 200),
        ("b", 0),
        ("b", 100),
    ]
    # a@0: (0.5 + 0.3)/2 = 0.4, sd = sqrt((0.1^2 + 0.1^2)/1) = 0.1414214; band 0.4 +- 0.1414 within [0.3, 0.5]
    # a@100: the NaN row is dropped -> only 0.7, n = 1, sd NaN, band [0.7, 0.7]
    # a@200: (0.9 + 0.8)/2 = 0.85, sd = sqrt(2 * 0.05^2) = 0.0707107 within [0.8, 0.9]: [0.7793, 0.9207] -> [0.8, 0.9]
    assert curves["mean"].tolist() == pytest.approx([0.4, 0.7, 0.85, 0.2, 0.4])
    assert curves["n"].tolist() == [2, 1, 2, 1, 1]
    assert curves.loc[0, "std"] == pytest.approx(0.1414214, abs=1e-7)
    assert math.isnan(curves.loc[1, "std"])
    assert curves.loc[2, "std"] == pytest.approx(0.0707107, abs=1e-7)
    assert curves["low"].tolist() == pytest.approx([0.3, 0.7, 0.8, 0.2, 0.4])
    assert curves["high"].tolist() == pytest.approx([0.5, 0.7, 0.9, 0.2, 0.4])
    # every run, dead ones included, when nothing is flagged: a@200 = (0.9 + 0.8 + 0.1)/3 = 0.6
    everyone = learning_curves(run_curves(histories, "val_accuracy"))
    assert everyone.loc[(everyone["variant"] == "a") & (everyone["step"] == 200), "mean"].item() == pytest.approx(0.6)


def test_learning_curves_band_stays_within_the_runs():
    """mean +- sd can leave [min, max] (one run far from the rest); the band never does."""
    values = [0.80, 0.80, 0.80, 0.20]  # mean 0.65, sd 0.3: 0.35 .. 0.95, but no run passed 0.80
    long = pd.DataFrame({"variant": "a", "seed": [1, 2, 3, 4], "step": 0, "value": values})
    (band,) = learning_curves(long).itertuples(index=False)
    assert (band.mean, band.std) == pytest.approx((0.65, 0.3))
    assert (band.low, band.high) == pytest.approx((0.35, 0.80))


def test_run_curves_smooth_each_run_and_name_a_missing_column():
    history = pd.DataFrame({"step": [0, 1, 2], "loss": [3.0, 1.0, 2.0]})
    smoothed = run_curves({("a", 1): history}, "loss", window=2)
    assert smoothed.to_dict("list") == {
        "variant": ["a"] * 3,
        "seed": [1] * 3,
        "step": [0, 1, 2],
        "value": [3.0, 2.0, 1.5],
    }
    with pytest.raises(DataError, match=r"b/seed-3.*'val_loss'"):
        run_curves({("b", 3): pd.DataFrame({"step": [0], "loss": [1.0]})}, "val_loss")
    assert learning_curves(run_curves({}, "loss")).empty


def test_curve_table_is_what_dvc_plots_reads():
    long = pd.DataFrame({"variant": "a", "seed": [1, 2, 3], "step": 5, "value": [0.5, 0.7, 0.1]})
    table = curve_table(learning_curves(long, {("a", 3): False}), "val_accuracy")
    assert table.columns.tolist() == [
        "step",
        "variant",
        "val_accuracy",
        "val_accuracy_low",
        "val_accuracy_high",
        "runs",
    ]
    assert table.iloc[0].tolist() == [5, "a", pytest.approx(0.6), pytest.approx(0.5), pytest.approx(0.7), 2]


# --- the whole report, on runs made up here ---------------------------------------------------


def run_outputs(variant: str, seed: int, accuracy: float):
    """One run's files as compare reads them; a run below 15% predicts class "b" for everything."""
    from types import SimpleNamespace

    dead = accuracy < 0.15
    val = [0.1, 0.1] if dead else [0.1 + seed / 100, accuracy]
    actual = ["a", "b", "c", "a"]
    return SimpleNamespace(
        record=record(variant, seed, accuracy, val_accuracy=val[-1]),
        history=pd.DataFrame({"step": [0, 1], "loss": [2.3, 2.3] if dead else [2.0, 1.0 + seed / 10]}),
        validation=pd.DataFrame({"step": [0, 1], "val_accuracy": val}),
        confusion_pairs=pd.DataFrame({"actual": actual, "predicted": ["b"] * 4 if dead else actual}),
    )


def test_build_report_curves_and_confusions_are_over_the_runs_that_trained():
    from types import SimpleNamespace

    from pipeline.config import load_params

    params = load_params(ROOT / "params.yaml")
    accuracies = {"baseline": [0.80, 0.82, 0.81], "transposed": [0.84, 0.10, 0.86]}  # transposed seed 2 died
    outputs = [run_outputs(v, seed, acc) for v, accs in accuracies.items() for seed, acc in enumerate(accs, 1)]
    data = SimpleNamespace(num_classes=10, classes=("a", "b", "c"), dataset="made_up", x_test=np.zeros((3, 4, 4, 1)))
    report = build_report(outputs, data, params, models={})

    # dvc plots' validation curve: transposed at step 1 is the mean of seeds 1 and 3, (0.84 + 0.86) / 2
    val = report.curves["val_accuracy"].set_index(["variant", "step"])
    assert val.loc[("transposed", 1), "val_accuracy"] == pytest.approx(0.85)
    assert val.loc[("transposed", 1), "runs"] == 2
    assert (val.loc[("transposed", 1), "val_accuracy_low"], val.loc[("transposed", 1), "val_accuracy_high"]) == (
        pytest.approx((0.84, 0.86))
    )
    # ... and the PNG's thick line is the same numbers, in percent
    (ax,) = report.figures["learning_curves_val_accuracy.png"].axes
    thick = [line for line in ax.get_lines() if line.get_linewidth() == 2.0 and len(line.get_xdata())]
    curve = report.curves["val_accuracy"]
    for line, variant in zip(thick, ["baseline", "transposed"], strict=True):
        expected = curve.loc[curve["variant"] == variant, "val_accuracy"] * 100
        assert line.get_ydata().tolist() == pytest.approx(expected.tolist())
    # the loss curve too: transposed's dead run (2.3) is not in it; smoothed over 20 steps per run
    loss = report.curves["loss"].set_index(["variant", "step"])
    assert loss.loc[("transposed", 1), "loss"] == pytest.approx(((2.0 + 1.1) / 2 + (2.0 + 1.3) / 2) / 2)

    # the confusion matrix leaves the dead run's all-"b" column out, and says so
    fig = report.figures["confusion_matrices.png"]
    axes = [a for a in fig.axes if a.images]
    transposed = axes[1].images[0].get_array()
    np.testing.assert_allclose(transposed, np.eye(3))
    assert axes[1].get_title() == "transposed (pooled accuracy 100.00%)\n2 runs that trained (1 that did not left out)"
    assert fig.get_suptitle().startswith("Confusion matrices of the runs that trained")

    # summary.json: the difference in points, as its key says
    assert report.metrics["transposed"]["vs_baseline_pp"] == pytest.approx((0.04 - 0.72 + 0.05) / 3 * 100)
