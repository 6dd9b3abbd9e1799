"""The comparison's numbers: one row per run (the runs table) and one per variant (the summary),
with statistics fit for bimodal outcomes and a paired comparison with a reference variant.

Pure functions on in-memory records and DataFrames; the summary's Markdown is pipeline/summary_text.py,
the report that writes both is pipeline/reporting.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline import statistics
from pipeline.errors import DataError
from pipeline.paths import run_name

RUN_COLUMNS = [
    "variant",
    "seed",
    "test_accuracy",
    "test_loss",
    "val_accuracy",
    "train_seconds",
    "trace_seconds",
    "train_images_per_second",
    "inference_images_per_second",
    "trainable_params",
    "flops_per_image",
    "peak_memory_mb",
    "run_id",
]
_INT_COLUMNS = ["seed", "trainable_params", "flops_per_image"]
_STR_COLUMNS = ["variant", "run_id"]

SUMMARY_COLUMNS = [
    "variant",
    "n_seeds",
    # reliability: how many runs trained (test accuracy at least 1.5x chance), Wilson interval
    "trained_runs",
    "trained_share",
    "trained_share_ci_low",
    "trained_share_ci_high",
    # against the baseline: Fisher's exact test on the trained counts (k/n against the baseline's),
    # two-sided, and Holm-adjusted over the same comparisons as p_value_adjusted
    "trained_p_fisher",
    "trained_p_fisher_adjusted",
    # accuracy over every run: mean, sd and a percentile bootstrap interval (inside the data's range)
    "test_accuracy_mean",
    "test_accuracy_std",
    "test_accuracy_ci_low",
    "test_accuracy_ci_high",
    # against the baseline, paired by seed: bootstrap interval, exact sign-flip test (primary),
    # paired t-test (beside it), Holm-adjusted primary p-value (the verdict's)
    "n_paired_seeds",
    "diff_vs_baseline_mean",
    "diff_ci_low",
    "diff_ci_high",
    "p_value",
    "p_value_ttest",
    "p_value_adjusted",
    "significant",
    "smallest_possible_p_value",
    "min_detectable_diff",
    # the same among seeds where both runs trained: conditional on training
    "trained_pairs",
    "trained_diff_mean",
    "trained_diff_ci_low",
    "trained_diff_ci_high",
    "trained_p_value_adjusted",
    "verdict",
    "train_seconds_mean",
    "train_seconds_std",
    "train_images_per_second_mean",
    "inference_images_per_second_mean",
    "trainable_params",
    "flops_per_image",
    "peak_memory_mb_max",
]


# --- runs ----------------------------------------------------------------------------------


def _run_name(record: Mapping, index: int) -> str:
    if "variant" in record and "seed" in record:
        return run_name(record["variant"], record["seed"])
    return f"record #{index}"


def _ordered_variants(seen: Iterable[str], variant_order: Sequence[str] | None) -> list[str]:
    """variant_order first (those present), then any other variant in first-seen order."""
    first_seen = list(dict.fromkeys(seen))
    if variant_order is None:
        return first_seen
    ordered = [v for v in dict.fromkeys(variant_order) if v in first_seen]
    return ordered + [v for v in first_seen if v not in ordered]


def runs_table(
    records: Iterable[Mapping], variant_order: Sequence[str] | None = None, num_classes: int | None = None
) -> pd.DataFrame:
    """One row per variant×seed with RUN_COLUMNS, sorted by variant then seed; with ``num_classes``,
    also its ``trained`` column (with_trained).

    Variants follow ``variant_order`` when given (variants it does not name come after, in
    first-seen order), else the order they first appear in ``records``. Extra keys are ignored;
    a missing key or a repeated variant×seed is a DataError naming the run.
    """
    rows = []
    for index, record in enumerate(records):
        missing = [key for key in RUN_COLUMNS if key not in record]
        if missing:
            raise DataError(
                f"run {_run_name(record, index)} has no {', '.join(repr(k) for k in missing)} "
                "in its metrics; re-run its evaluate stage"
            )
        rows.append({key: record[key] for key in RUN_COLUMNS})

    table = pd.DataFrame(rows, columns=RUN_COLUMNS)
    if table.empty:
        return table if num_classes is None else with_trained(table, num_classes)
    for column in RUN_COLUMNS:
        if column in _STR_COLUMNS:
            table[column] = table[column].astype(str)
        elif column in _INT_COLUMNS:
            table[column] = table[column].astype("int64")
        else:
            table[column] = table[column].astype("float64")

    duplicated = table.duplicated(["variant", "seed"], keep=False)
    if duplicated.any():
        pairs = sorted({f"{v}/seed-{s}" for v, s in table.loc[duplicated, ["variant", "seed"]].itertuples(index=False)})
        raise DataError(f"more than one run for {', '.join(pairs)}")

    order = _ordered_variants(table["variant"], variant_order)
    rank = table["variant"].map({v: i for i, v in enumerate(order)})
    table = (
        table.assign(_rank=rank)
        .sort_values(["_rank", "seed"], kind="stable")
        .drop(columns="_rank")
        .reset_index(drop=True)
    )
    return table if num_classes is None else with_trained(table, num_classes)


def with_trained(runs: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """``runs`` with a ``trained`` column: whether each run's test accuracy reached 1.5x chance
    (statistics.trained). Decided here once per table; the summary, the figures' choice of runs and
    the list of runs that did not train all read this column."""
    return runs.assign(trained=statistics.trained(runs["test_accuracy"].to_numpy(dtype=float), num_classes))


def collapsed_run(record: Mapping) -> bool:
    """A run that did not train (its ``trained``: it died or stalled) or whose loss diverged."""
    return record.get("diverged_at_step") is not None or not bool(record["trained"])


# --- summary -------------------------------------------------------------------------------


def format_p(p: float) -> str:
    """A p-value as the summary's sentences write it: p<0.001, else two significant digits."""
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def n_comparisons(m: int) -> str:
    """'1 comparison', '7 comparisons'."""
    return f"{m} comparison{'' if m == 1 else 's'}"


def _verdict(
    comparison: statistics.PairedComparison, p_adjusted: float, alpha: float, m: int, reference: str = "baseline"
) -> str:
    """One line: the mean difference and whether it is significant after Holm's adjustment."""
    n = comparison.n
    if n == 0:
        return f"no seeds in common with {reference}, not enough paired seeds to test"
    pp = f"{comparison.mean_difference * 100:+.2f} pp vs {reference}"
    if n == 1:
        return f"{pp} on the only paired seed, not enough paired seeds to test"
    if comparison.note.startswith("identical"):
        return f"{pp}, identical to {reference} on all {n} paired seeds"
    if math.isnan(p_adjusted):
        return f"{pp}, test undefined ({n} paired seeds)"
    word = "significant" if p_adjusted < alpha else "not significant"
    floor = ""
    if comparison.smallest_possible_p_value * m >= alpha:
        floor = f"; {n} seeds cannot reach significance here, whatever the difference"
    return (
        f"{pp}, {word} (Holm-adjusted {format_p(p_adjusted)} over the {n_comparisons(m)} with {reference};"
        f" sign-flip {format_p(comparison.p_value)}, t-test {format_p(comparison.p_value_ttest)},"
        f" {n} paired seeds{floor})"
    )


def on_common_seeds(one: pd.DataFrame, other: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two sets of runs (each of one variant, with a ``seed`` column) cut to the seeds both ran,
    indexed by seed in seed order. Every paired comparison and every count of runs that trained
    compares runs this way (the summary, the protocols' Holm families, the pixel-scaling families):
    where one side ran more seeds, its extra runs are left out."""
    one, other = one.set_index("seed"), other.set_index("seed")
    seeds = one.index.intersection(other.index).sort_values()
    return one.loc[seeds], other.loc[seeds]


def variants_on_common_seeds(runs: pd.DataFrame, variant: str, other: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs of two variants of one table on the seeds both ran (on_common_seeds)."""
    return on_common_seeds(runs[runs["variant"] == variant], runs[runs["variant"] == other])


def trained_counts(one: pd.DataFrame, other: pd.DataFrame) -> tuple[int, int, int, int]:
    """(runs that trained, runs) of one set of runs and of the other: the counts Fisher's exact test
    compares."""
    return int(one["trained"].sum()), len(one), int(other["trained"].sum()), len(other)


def summarize(
    runs: pd.DataFrame,
    num_classes: int,
    baseline: str = "baseline",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per variant (in the order of ``runs``), with statistics that fit bimodal outcomes
    (a run trains, stalls or dies): reliability and accuracy apart, and a paired comparison with
    ``baseline`` over the seeds both have. See pipeline.statistics for each method.

    ``significant`` means the Holm-adjusted sign-flip p-value (over every variant compared with the
    baseline) is below 1 - confidence. The baseline's own row has NaN comparison columns and verdict
    "reference". The confidence and the baseline are kept in ``.attrs``. A ``runs`` without its
    ``trained`` column (runs_table without num_classes) gets it here.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if "trained" not in runs.columns:
        runs = with_trained(runs, num_classes)
    alpha = 1 - confidence
    variants = list(dict.fromkeys(runs["variant"]))
    has_baseline = baseline in variants
    compared = [v for v in variants if v != baseline] if has_baseline else []
    aligned = {v: variants_on_common_seeds(runs, v, baseline) for v in compared}  # (variant, baseline) runs
    pairs = {  # (variant, baseline) accuracies, by seed
        v: (a["test_accuracy"].to_numpy(dtype=float), b["test_accuracy"].to_numpy(dtype=float))
        for v, (a, b) in aligned.items()
    }
    comparisons = {v: statistics.paired_comparison(*pairs[v], confidence) for v in compared}
    conditional = {v: statistics.conditional_comparison(*pairs[v], num_classes, confidence) for v in compared}
    adjusted = dict(zip(compared, statistics.holm([comparisons[v].p_value for v in compared]), strict=True))
    adjusted_trained = dict(zip(compared, statistics.holm([conditional[v].p_value for v in compared]), strict=True))
    fisher = {v: statistics.fisher_exact_p_value(*trained_counts(*aligned[v])) for v in compared}
    adjusted_fisher = dict(zip(compared, statistics.holm([fisher[v] for v in compared]), strict=True))
    # Holm leaves NaN p-values (fewer than 2 paired seeds) out of m; count the same comparisons here
    m = max(sum(not math.isnan(comparisons[v].p_value) for v in compared), 1)

    rows = []
    for variant in variants:
        group = runs.loc[runs["variant"] == variant]
        acc = group["test_accuracy"].to_numpy(dtype=float)
        reliability = statistics.reliability(group["trained"].to_numpy(dtype=bool), confidence)
        accuracy = statistics.mean_interval(acc, confidence)
        row = {
            "variant": variant,
            "n_seeds": len(group),
            "trained_runs": reliability.k,
            "trained_share": reliability.share,
            "trained_share_ci_low": reliability.low,
            "trained_share_ci_high": reliability.high,
            "test_accuracy_mean": accuracy.mean,
            "test_accuracy_std": float(np.std(acc, ddof=1)) if len(acc) > 1 else math.nan,
            "test_accuracy_ci_low": accuracy.low,
            "test_accuracy_ci_high": accuracy.high,
        }
        if variant in comparisons:
            c, t = comparisons[variant], conditional[variant]
            differences = np.subtract(*pairs[variant])
            row |= {
                "trained_p_fisher": fisher[variant],
                "trained_p_fisher_adjusted": adjusted_fisher[variant],
                "n_paired_seeds": c.n,
                "diff_vs_baseline_mean": c.mean_difference,
                "diff_ci_low": c.ci_low,
                "diff_ci_high": c.ci_high,
                "p_value": c.p_value,
                "p_value_ttest": c.p_value_ttest,
                "p_value_adjusted": adjusted[variant],
                "significant": bool(adjusted[variant] < alpha),
                "smallest_possible_p_value": c.smallest_possible_p_value,
                "min_detectable_diff": statistics.minimum_detectable_difference(differences, alpha=alpha / m),
                "trained_pairs": t.n,
                "trained_diff_mean": t.mean_difference,
                "trained_diff_ci_low": t.ci_low,
                "trained_diff_ci_high": t.ci_high,
                "trained_p_value_adjusted": adjusted_trained[variant],
                "verdict": _verdict(c, adjusted[variant], alpha, m, baseline),
            }
        else:
            row |= {
                "n_paired_seeds": len(group) if variant == baseline else 0,
                "significant": False,
                "verdict": "reference" if variant == baseline else "no baseline to compare with",
            }
        row |= {
            "train_seconds_mean": group["train_seconds"].mean(),
            "train_seconds_std": group["train_seconds"].std(ddof=1),
            "train_images_per_second_mean": group["train_images_per_second"].mean(),
            "inference_images_per_second_mean": group["inference_images_per_second"].mean(),
            "trainable_params": group["trainable_params"].iloc[0],
            "flops_per_image": group["flops_per_image"].iloc[0],
            "peak_memory_mb_max": group["peak_memory_mb"].max(),
        }
        rows.append(row)

    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    summary.attrs["confidence"] = confidence
    summary.attrs["baseline"] = baseline
    summary.attrs["comparisons"] = m
    # the Holm family: the comparisons with a p-value (fewer than 2 paired seeds give none)
    summary.attrs["compared"] = [v for v in compared if not math.isnan(comparisons[v].p_value)]
    return summary
