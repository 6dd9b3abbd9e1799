"""The report's numbers against values worked out by hand (arithmetic in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import DataError
from pipeline.reporting import (
    RUN_COLUMNS,
    learning_curves,
    runs_table,
    summarize,
    summary_markdown,
)


def t_quantile_df2(q: float) -> float:
    """Closed form of the Student t quantile for df=2: t = (2q - 1) / sqrt(2 q (1 - q))."""
    return (2 * q - 1) / math.sqrt(2 * q * (1 - q))


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


BASELINE = {1: 0.90, 2: 0.92, 3: 0.91}
TRANSPOSED = {1: 0.91, 2: 0.94, 3: 0.92}


def runs(**variants: dict[int, float]) -> pd.DataFrame:
    return runs_table([record(name, seed, acc) for name, accs in variants.items() for seed, acc in accs.items()])


def row(summary: pd.DataFrame, variant: str) -> pd.Series:
    return summary.set_index("variant").loc[variant]


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


# --- summarize -------------------------------------------------------------------------------


def test_single_variant_mean_sd_ci_by_hand():
    # baseline [0.90, 0.92, 0.91]: mean 0.91; deviations -0.01, +0.01, 0 -> sd = sqrt(0.0002 / 2) = 0.01
    # CI = 0.91 ± t_{0.975,2} * 0.01 / sqrt(3) = 0.91 ± 4.302653 * 0.0057735 = 0.91 ± 0.0248414
    t975 = t_quantile_df2(0.975)
    assert t975 == pytest.approx(4.302653, abs=1e-6)
    base = row(summarize(runs(baseline=BASELINE)), "baseline")
    assert base["n_seeds"] == 3
    assert base["test_accuracy_mean"] == pytest.approx(0.91)
    assert base["test_accuracy_std"] == pytest.approx(0.01)
    assert base["test_accuracy_ci_low"] == pytest.approx(0.8851586, abs=1e-7)
    assert base["test_accuracy_ci_high"] == pytest.approx(0.9348414, abs=1e-7)
    assert base["verdict"] == "reference"
    assert math.isnan(base["p_value"]) and not base["significant"]
    # train_seconds 101, 102, 103 -> mean 102, sd 1; peak memory max = 500 + 3
    assert base["train_seconds_mean"] == pytest.approx(102.0)
    assert base["train_seconds_std"] == pytest.approx(1.0)
    assert base["peak_memory_mb_max"] == 503.0
    assert base["trainable_params"] == 123456
    assert base["flops_per_image"] == 9876543


def test_paired_difference_by_hand():
    # diffs by seed: 0.91-0.90, 0.94-0.92, 0.92-0.91 = [0.01, 0.02, 0.01]
    # mean = 0.04/3 = 0.0133333; deviations -1/300, +2/300, -1/300 -> var = (6/90000)/2 = 1/30000
    # sd = 0.0057735, se = sd/sqrt(3) = 1/300; t = (0.04/3)/(1/300) = 4.0, df = 2
    # df=2 two-sided p = 1 - t/sqrt(2 + t^2) = 1 - 4/sqrt(18) = 0.0571910
    # CI = 0.0133333 ± 4.302653 * (1/300) = 0.0133333 ± 0.0143422 -> [-0.0010088, 0.0276755]
    summary = summarize(runs(baseline=BASELINE, transposed=TRANSPOSED))
    assert summary["variant"].tolist() == ["baseline", "transposed"]
    tr = row(summary, "transposed")
    assert tr["n_paired_seeds"] == 3
    assert tr["diff_vs_baseline_mean"] == pytest.approx(0.0133333, abs=1e-7)
    p_hand = 1 - 4 / math.sqrt(18)
    assert p_hand == pytest.approx(0.057191, abs=1e-6)
    assert tr["p_value"] == pytest.approx(p_hand, rel=1e-6)
    half = t_quantile_df2(0.975) / 300
    assert tr["diff_ci_low"] == pytest.approx(0.04 / 3 - half, abs=1e-9)
    assert tr["diff_ci_high"] == pytest.approx(0.04 / 3 + half, abs=1e-9)
    assert tr["diff_ci_low"] == pytest.approx(-0.0010088, abs=1e-7)
    assert not tr["significant"]  # 0.0572 >= 0.05
    assert tr["verdict"].startswith("+1.33 pp vs baseline, not significant (p=0.057")
    # accuracy of the variant: mean 2.77/3 = 0.923333
    # sd = sqrt((0.0133^2 + 0.0167^2 + 0.0033^2) / 2) = 0.015275
    assert tr["test_accuracy_mean"] == pytest.approx(0.9233333, abs=1e-7)
    assert tr["test_accuracy_std"] == pytest.approx(0.0152753, abs=1e-7)


def test_confidence_level_sets_threshold_and_interval():
    # at 90%: alpha = 0.10 > p = 0.0572 -> significant; t_{0.95,2} = 0.9/sqrt(0.095) = 2.919986
    summary = summarize(runs(baseline=BASELINE, transposed=TRANSPOSED), confidence=0.90)
    tr = row(summary, "transposed")
    assert tr["significant"]
    assert "significant (p=0.057" in tr["verdict"] and "not significant" not in tr["verdict"]
    assert tr["diff_ci_high"] == pytest.approx(0.04 / 3 + 2.919986 / 300, abs=1e-7)
    assert summary.attrs["confidence"] == 0.90


def test_unpaired_seeds_use_only_common_seeds():
    # variant has seeds 1, 2, 4; baseline 1, 2, 3 -> pairs for seeds 1, 2 only: diffs [0.01, 0.02]
    # mean 0.015, sd = sqrt(2 * 0.005^2 / 1) = 0.0070711, se = 0.005, t = 3, df = 1
    # df=1 (Cauchy) two-sided p = 1 - 2*atan(3)/pi = 0.2048328
    # CI = 0.015 ± tan(0.475*pi) * 0.005 = 0.015 ± 12.706205 * 0.005 = [-0.0485310, 0.0785310]
    summary = summarize(runs(baseline=BASELINE, transposed={1: 0.91, 2: 0.94, 4: 0.99}))
    tr = row(summary, "transposed")
    assert tr["n_seeds"] == 3
    assert tr["n_paired_seeds"] == 2
    assert tr["diff_vs_baseline_mean"] == pytest.approx(0.015)
    assert tr["p_value"] == pytest.approx(1 - 2 * math.atan(3) / math.pi, rel=1e-6)
    assert tr["diff_ci_low"] == pytest.approx(0.015 - math.tan(0.475 * math.pi) * 0.005, abs=1e-9)
    assert tr["diff_ci_high"] == pytest.approx(0.0785310, abs=1e-7)


def test_one_seed_gives_nan_spread_and_no_test():
    summary = summarize(runs(baseline=BASELINE, single={1: 0.95}))
    single = row(summary, "single")
    assert single["n_seeds"] == 1
    assert single["test_accuracy_mean"] == pytest.approx(0.95)
    for column in ("test_accuracy_std", "test_accuracy_ci_low", "test_accuracy_ci_high", "train_seconds_std"):
        assert math.isnan(single[column]), column
    assert single["diff_vs_baseline_mean"] == pytest.approx(0.05)  # 0.95 - 0.90 on seed 1
    assert math.isnan(single["diff_ci_low"]) and math.isnan(single["p_value"])
    assert not single["significant"]
    assert "not enough paired seeds to test" in single["verdict"]


def test_no_common_seed():
    summary = summarize(runs(baseline=BASELINE, other={7: 0.95, 8: 0.96}))
    other = row(summary, "other")
    assert other["n_paired_seeds"] == 0
    assert math.isnan(other["diff_vs_baseline_mean"]) and math.isnan(other["p_value"])
    assert "not enough paired seeds to test" in other["verdict"]


def test_identical_runs_have_nan_p_and_say_so():
    summary = summarize(runs(baseline=BASELINE, copy=BASELINE))
    copy = row(summary, "copy")
    assert copy["diff_vs_baseline_mean"] == 0.0
    assert math.isnan(copy["p_value"]) and not copy["significant"]
    assert copy["verdict"].startswith("+0.00 pp vs baseline, identical")


def test_baseline_absent():
    summary = summarize(runs(transposed=TRANSPOSED, deep=BASELINE), baseline="baseline")
    assert summary["variant"].tolist() == ["transposed", "deep"]
    for column in ("diff_vs_baseline_mean", "diff_ci_low", "diff_ci_high", "p_value"):
        assert summary[column].isna().all(), column
    assert not summary["significant"].any()
    assert set(summary["verdict"]) == {"no baseline to compare with"}


# --- markdown --------------------------------------------------------------------------------


def test_summary_markdown_formats_numbers_and_verdicts():
    text = summary_markdown(summarize(runs(baseline=BASELINE, transposed=TRANSPOSED)), title="Comparison")
    assert text.startswith("# Comparison\n")
    assert "| variant" in text and "test accuracy % (mean ± sd)" in text
    assert "91.00 ± 1.00" in text  # baseline: 0.91 ± 0.01 as percent
    assert "[88.52, 93.48]" in text  # 0.8851586, 0.9348414 as percent
    assert "92.33 ± 1.53" in text  # transposed: 0.923333 ± 0.015275
    assert "+1.33 [-0.10, +2.77]" in text  # diff 0.0133333 [-0.0010088, 0.0276755] in pp
    assert "0.0572" in text  # p to 3 significant digits
    assert "102.0 ± 1.0" in text  # train seconds
    assert "123,456" in text and "9,876,543" in text and "12,346" in text
    assert "reference" in text
    bullets = [line for line in text.splitlines() if line.startswith("- ")]
    assert bullets == ["- **transposed**: +1.33 pp vs baseline, not significant (p=0.057, 3 paired seeds)"]
    # machine names stay in the DataFrame (the CSV), not in the Markdown headers
    assert "test_accuracy_mean" not in text


def test_summary_markdown_handles_nan_and_missing_baseline():
    text = summary_markdown(summarize(runs(single={1: 0.95})))
    assert "95.00" in text and "n/a" in text
    assert "- **single**: no baseline to compare with" in text


# --- learning curves -------------------------------------------------------------------------


def test_learning_curves_by_hand():
    histories = {
        ("a", 1): pd.DataFrame({"step": [0, 100, 200], "val_accuracy": [0.5, 0.7, 0.9]}),
        ("a", 2): pd.DataFrame({"step": [0, 100, 200], "val_accuracy": [0.3, np.nan, 0.8], "loss": 1.0}),
        ("b", 1): pd.DataFrame({"step": [0, 100], "val_accuracy": [0.2, 0.4]}),
    }
    curves = learning_curves(histories, "val_accuracy")
    assert list(curves.columns) == ["variant", "step", "mean", "std", "n"]
    assert list(zip(curves["variant"], curves["step"], strict=True)) == [
        ("a", 0),
        ("a", 100),
        ("a", 200),
        ("b", 0),
        ("b", 100),
    ]
    # a@0: (0.5 + 0.3)/2 = 0.4, sd = sqrt((0.1^2 + 0.1^2)/1) = 0.1414214
    # a@100: the NaN row is dropped -> only 0.7, n = 1, sd NaN
    # a@200: (0.9 + 0.8)/2 = 0.85, sd = sqrt(2 * 0.05^2) = 0.0707107
    assert curves["mean"].tolist() == pytest.approx([0.4, 0.7, 0.85, 0.2, 0.4])
    assert curves["n"].tolist() == [2, 1, 2, 1, 1]
    assert curves.loc[0, "std"] == pytest.approx(0.1414214, abs=1e-7)
    assert math.isnan(curves.loc[1, "std"])
    assert curves.loc[2, "std"] == pytest.approx(0.0707107, abs=1e-7)


def test_learning_curves_missing_column():
    with pytest.raises(DataError, match=r"b/seed-3.*'val_loss'"):
        learning_curves({("b", 3): pd.DataFrame({"step": [0], "loss": [1.0]})}, "val_loss")
    assert learning_curves({}, "loss").empty
