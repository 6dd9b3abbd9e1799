"""The comparison report's numbers: per-run table, per-variant summary with paired tests, learning curves.

Everything here computes on in-memory records and DataFrames; the compare stage reads the metrics
files and writes the CSV/Markdown these functions return.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline import statistics, training
from pipeline.errors import DataError
from pipeline.paths import run_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pipeline.artifacts import RunOutputs
    from pipeline.config import Params
    from pipeline.prepared import Prepared

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

CURVE_COLUMNS = ["variant", "step", "mean", "std", "low", "high", "n"]


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


def runs_table(records: Iterable[Mapping], variant_order: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per variant×seed with exactly RUN_COLUMNS, sorted by variant then seed.

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
        return table
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
    return (
        table.assign(_rank=rank)
        .sort_values(["_rank", "seed"], kind="stable")
        .drop(columns="_rank")
        .reset_index(drop=True)
    )


# --- summary -------------------------------------------------------------------------------


def _format_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def _comparisons(m: int) -> str:
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
        f"{pp}, {word} (Holm-adjusted {_format_p(p_adjusted)} over the {_comparisons(m)} with {reference};"
        f" sign-flip {_format_p(comparison.p_value)}, t-test {_format_p(comparison.p_value_ttest)},"
        f" {n} paired seeds{floor})"
    )


def _paired(runs: pd.DataFrame, variant: str, baseline: str) -> tuple[np.ndarray, np.ndarray]:
    """The test accuracies of variant and baseline on the seeds both have, aligned by seed."""
    acc = runs.pivot_table(index="seed", columns="variant", values="test_accuracy", aggfunc="first")
    both = acc[[variant, baseline]].dropna()
    return both[variant].to_numpy(dtype=float), both[baseline].to_numpy(dtype=float)


def _trained_count(runs: pd.DataFrame, variant: str, num_classes: int) -> tuple[int, int]:
    """(runs that trained, runs) of a variant: the counts Fisher's exact test compares."""
    acc = runs.loc[runs["variant"] == variant, "test_accuracy"].to_numpy(dtype=float)
    return int(statistics.trained(acc, num_classes).sum()), int(acc.size)


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
    "reference". The confidence and the baseline are kept in ``.attrs``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    alpha = 1 - confidence
    variants = list(dict.fromkeys(runs["variant"]))
    has_baseline = baseline in variants
    compared = [v for v in variants if v != baseline] if has_baseline else []
    pairs = {v: _paired(runs, v, baseline) for v in compared}  # (variant, baseline) accuracies by seed
    comparisons = {v: statistics.paired_comparison(*pairs[v], confidence) for v in compared}
    conditional = {v: statistics.conditional_comparison(*pairs[v], num_classes, confidence) for v in compared}
    adjusted = dict(zip(compared, statistics.holm([comparisons[v].p_value for v in compared]), strict=True))
    adjusted_trained = dict(zip(compared, statistics.holm([conditional[v].p_value for v in compared]), strict=True))
    counts = {v: _trained_count(runs, v, num_classes) for v in variants}
    fisher = {v: statistics.fisher_exact_p_value(*counts[v], *counts[baseline]) for v in compared}
    adjusted_fisher = dict(zip(compared, statistics.holm([fisher[v] for v in compared]), strict=True))
    # Holm leaves NaN p-values (fewer than 2 paired seeds) out of m; count the same comparisons here
    m = max(sum(not math.isnan(comparisons[v].p_value) for v in compared), 1)

    rows = []
    for variant in variants:
        group = runs.loc[runs["variant"] == variant]
        acc = group["test_accuracy"].to_numpy(dtype=float)
        reliability = statistics.reliability(statistics.trained(acc, num_classes), confidence)
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


# --- markdown ------------------------------------------------------------------------------

_NA = "n/a"


def _isnan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or bool(pd.isna(value))


def _pct(value: float, sign: bool = False) -> str:
    return _NA if _isnan(value) else f"{value * 100:{'+' if sign else ''}.2f}"


def _interval(low: float, high: float, sign: bool = False) -> str:
    if _isnan(low) or _isnan(high):
        return _NA
    return f"[{_pct(low, sign)}, {_pct(high, sign)}]"


def _mean_pm_sd(mean: float, sd: float, fmt: str) -> str:
    if _isnan(mean):
        return _NA
    return f"{mean:{fmt}}" if _isnan(sd) else f"{mean:{fmt}} ± {sd:{fmt}}"


def _thousands(value) -> str:
    return _NA if _isnan(value) else f"{round(float(value)):,}"


def diff_cell(mean: float, low: float, high: float, verdict: str) -> str:
    if verdict == "reference":
        return "reference"
    if _isnan(mean):
        return _NA
    if _isnan(low):
        return _pct(mean, sign=True)
    return f"{_pct(mean, sign=True)} {_interval(low, high, sign=True)}"


def _share_cell(k: int, n: int, low: float, high: float) -> str:
    return f"{k}/{n}" if _isnan(low) else f"{k}/{n} [{low * 100:.0f}, {high * 100:.0f}]"


def _mean_ci_cell(mean: float, low: float, high: float) -> str:
    if _isnan(mean):
        return _NA
    return _pct(mean) if _isnan(low) else f"{_pct(mean)} {_interval(low, high)}"


def _fisher_cell(p: float, adjusted: float, verdict: str) -> str:
    if verdict == "reference":
        return "reference"
    return _NA if _isnan(p) else f"{p:.3g} ({adjusted:.3g})"


def summary_table_markdown(summary: pd.DataFrame) -> str:
    """The summary as one Markdown table: reliability (trained share, Fisher's p) first, then accuracy
    over all runs and, beside it, over the seeds where both runs trained, then cost."""
    confidence = summary.attrs.get("confidence", 0.95)
    baseline = summary.attrs.get("baseline")
    ci = f"{confidence * 100:g}% CI"
    col = summary.__getitem__
    p_cell = [_NA if _isnan(p) else f"{p:.3g}" for p in col("p_value_adjusted")]
    table = pd.DataFrame(
        {
            "variant": col("variant"),
            "params": [_thousands(v) for v in col("trainable_params")],
            f"trained [{ci}, %]": [
                _share_cell(k, n, lo, hi)
                for k, n, lo, hi in zip(
                    col("trained_runs"),
                    col("n_seeds"),
                    col("trained_share_ci_low"),
                    col("trained_share_ci_high"),
                    strict=True,
                )
            ],
            "trained: Fisher p (Holm)": [
                _fisher_cell(p, adjusted, verdict)
                for p, adjusted, verdict in zip(
                    col("trained_p_fisher"), col("trained_p_fisher_adjusted"), col("verdict"), strict=True
                )
            ],
            f"test accuracy % [{ci}]": [
                _mean_ci_cell(mu, lo, hi)
                for mu, lo, hi in zip(
                    col("test_accuracy_mean"), col("test_accuracy_ci_low"), col("test_accuracy_ci_high"), strict=True
                )
            ],
            f"vs {baseline}, pp [{ci}]": [
                diff_cell(mu, lo, hi, verdict)
                for mu, lo, hi, verdict in zip(
                    col("diff_vs_baseline_mean"), col("diff_ci_low"), col("diff_ci_high"), col("verdict"), strict=True
                )
            ],
            "p (Holm)": p_cell,
            "if both trained: pp [CI] (pairs)": [
                "reference"
                if verdict == "reference"
                else _NA
                if _isnan(mu)
                else f"{diff_cell(mu, lo, hi, verdict)} ({int(n)})"
                for mu, lo, hi, n, verdict in zip(
                    col("trained_diff_mean"),
                    col("trained_diff_ci_low"),
                    col("trained_diff_ci_high"),
                    col("trained_pairs"),
                    col("verdict"),
                    strict=True,
                )
            ],
            "p (Holm), both trained": [_NA if _isnan(p) else f"{p:.3g}" for p in col("trained_p_value_adjusted")],
            "detectable pp": [_NA if _isnan(d) else f"{d * 100:.1f}" for d in col("min_detectable_diff")],
            "train s (mean ± sd)": [
                _mean_pm_sd(mu, sd, ".1f")
                for mu, sd in zip(col("train_seconds_mean"), col("train_seconds_std"), strict=True)
            ],
            "inference img/s": [_thousands(v) for v in col("inference_images_per_second_mean")],
            "FLOPs/image": [_thousands(v) for v in col("flops_per_image")],
        }
    )
    numeric = {
        "params",
        "inference img/s",
        "FLOPs/image",
        "p (Holm)",
        "p (Holm), both trained",
        "detectable pp",
        "trained: Fisher p (Holm)",
    }
    colalign = ["right" if c in numeric else "left" for c in table.columns]
    return table.to_markdown(index=False, disable_numparse=True, colalign=colalign)


def holm_family(summary: pd.DataFrame) -> str:
    """What a Holm-adjusted p-value of this summary is adjusted over, in words: 'the 7 comparisons with
    baseline (transposed, ...)'. A p-value adjusted over another family is not the same number."""
    baseline = summary.attrs.get("baseline")
    compared = summary.attrs.get("compared", [])
    m = summary.attrs.get("comparisons", len(compared))
    return f"the {_comparisons(m)} with {baseline} ({', '.join(compared)})"


def _established(p: float, alpha: float) -> str:
    return "established" if p < alpha else "not established"


def _lead_line(row: Mapping[str, Any], baseline: str, base_row: Mapping[str, Any], alpha: float) -> str:
    """A variant's bullet: reliability first (its trained share against the reference's, Fisher's p),
    then accuracy when both trained, then over all runs; each with its Holm-adjusted p."""
    share = f"{int(row['trained_runs'])}/{int(row['n_seeds'])}"
    base_share = f"{int(base_row['trained_runs'])}/{int(base_row['n_seeds'])}"
    parts = [f"trained {share} against {base_share}"]
    if not _isnan(row["trained_p_fisher"]):
        if row["trained_runs"] * base_row["n_seeds"] == base_row["trained_runs"] * row["n_seeds"]:
            parts[0] += " (the same share)"
        else:
            p, adjusted = row["trained_p_fisher"], row["trained_p_fisher_adjusted"]
            parts[0] += (
                f" (Fisher's exact p = {p:.2g}, Holm {adjusted:.2g}: a difference in how often runs train is"
                f" {_established(adjusted, alpha)})"
            )
    both = row["trained_diff_mean"]
    everything = row["diff_vs_baseline_mean"]
    if not _isnan(both) and row["trained_pairs"] != row["n_paired_seeds"]:
        p = row["trained_p_value_adjusted"]
        parts.append(
            f"when both trained {diff_cell(both, row['trained_diff_ci_low'], row['trained_diff_ci_high'], '')} pp"
            f" over {int(row['trained_pairs'])} pairs ({'Holm ' + _format_p(p) if not _isnan(p) else 'untested'})"
        )
    if not _isnan(everything):
        p = row["p_value_adjusted"]
        tested = f"Holm {_format_p(p)}: {_established(p, alpha)}" if not _isnan(p) else "untested"
        parts.append(
            f"over all {int(row['n_paired_seeds'])} paired runs"
            f" {diff_cell(everything, row['diff_ci_low'], row['diff_ci_high'], '')} pp ({tested})"
            + (
                ", a mean that mixes runs that died with runs that trained"
                if row["trained_pairs"] != row["n_paired_seeds"]
                else ""
            )
        )
    return f"- **{row['variant']}**: " + "; ".join(parts) + "."


def summary_markdown(summary: pd.DataFrame, *, title: str | None = None) -> str:
    """reports/summary.md: what the runs say, led as the README leads. First how often each variant
    trains (reliability, Fisher's exact test against the reference), then how accurate it is when it
    trains and over all runs (paired with the reference by seed), each p-value Holm-adjusted over a
    family the text names; then the table and how to read it."""
    confidence = summary.attrs.get("confidence", 0.95)
    alpha = 1 - confidence
    baseline = summary.attrs.get("baseline")
    m = summary.attrs.get("comparisons", 1)
    col = summary.__getitem__
    parts = [f"# {title}\n"] if title else []
    rows = {row["variant"]: row for row in summary.to_dict("records")}
    compared = [row for row in rows.values() if row["verdict"] != "reference"]
    if baseline in rows and compared:
        parts.append(
            f"Each variant against **{baseline}**, paired by seed. Every Holm-adjusted p-value here is adjusted over"
            f" {holm_family(summary)}; a p-value adjusted over another set of comparisons (another reference,"
            " other variants) is another number. A run *trained* when its test accuracy reached 1.5x chance;"
            " reliability and accuracy are reported apart, because a run that dies (predicts one class) moves a"
            " mean by tens of points.\n"
        )
        parts.append("\n".join(_lead_line(row, baseline, rows[baseline], alpha) for row in compared) + "\n")
    elif compared:
        parts.append("\n".join(f"- **{row['variant']}**: {row['verdict']}" for row in compared) + "\n")
    parts.append(summary_table_markdown(summary))
    if baseline in rows and compared:
        # (floor, paired seeds) of the compared rows: the note names the seeds of the lowest floor
        floors = [
            (p, n)
            for p, n in zip(col("smallest_possible_p_value"), col("n_paired_seeds"), strict=True)
            if not _isnan(p)
        ]
        floor = (
            f" With {int(min(floors)[1])} paired seeds the sign-flip test cannot give p below"
            f" {min(floors)[0]:.3g}, so after Holm's adjustment over {_comparisons(m)} a difference is significant only"
            f" if p x {m} < {alpha:g}."
            if floors
            else ""
        )
        parts.append(
            f"\n*trained*: runs whose test accuracy reached 1.5x chance, with a Wilson interval; *Fisher p*:"
            f" Fisher's exact test (two-sided) of the trained count against {baseline}'s, Holm-adjusted in"
            f" brackets. *vs {baseline}*: the mean paired difference over all runs, with the exact sign-flip"
            f" permutation test on the paired differences (the paired t-test, which a run that died breaks, is in"
            f" summary.csv); *if both trained*: the same over the seeds where both runs trained, conditional on"
            f" training: read it beside the all-runs one, never instead. Holm: over {holm_family(summary)}."
            f"{floor} *detectable pp*: the smallest true mean difference these seeds would detect with 80%"
            f" power at the spread observed (paired t-test at {alpha:g}/{m}). Intervals on means are percentile"
            " bootstraps, so they stay within the data's range."
        )
    return "\n".join(parts) + "\n"


# --- learning curves -------------------------------------------------------------------------


def learning_curves(runs: pd.DataFrame, trained: Mapping[tuple[str, int], bool] | None = None) -> pd.DataFrame:
    """Per variant and step, over the runs that trained: the mean, the sample sd (ddof=1; NaN where
    one run), a band of mean ± sd clipped to those runs' [min, max] (it never claims a value no run
    had) and the run count, in long form (CURVE_COLUMNS). ``runs``: run_curves' long form;
    ``trained`` flags each (variant, seed), a run it does not name counts as trained, None keeps
    every run. NaN values are left out; a variant with no trained run has no rows. Variants keep
    their first-seen order. learning_curves_*.png and the `dvc plots` curves both draw these numbers."""
    trained = trained or {}
    keep = np.array([trained.get((v, s), True) for v, s in zip(runs["variant"], runs["seed"], strict=True)], bool)
    long = runs.loc[keep].dropna(subset=["value"])
    if long.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    order = {v: i for i, v in enumerate(dict.fromkeys(runs["variant"]))}
    curves = (
        long.groupby(["variant", "step"], sort=False)["value"]
        .agg(mean="mean", std="std", min="min", max="max", n="count")  # pandas: std is ddof=1
        .reset_index()
    )
    spread = curves["std"].fillna(0.0)
    curves["low"] = np.maximum(curves["mean"] - spread, curves["min"])
    curves["high"] = np.minimum(curves["mean"] + spread, curves["max"])
    curves["n"] = curves["n"].astype("int64")
    curves = curves.assign(_rank=curves["variant"].map(order)).sort_values(["_rank", "step"], kind="stable")
    return curves.drop(columns="_rank").reset_index(drop=True)[CURVE_COLUMNS]


def run_curves(
    histories: Mapping[tuple[str, int], pd.DataFrame], column: str, window: int | None = None
) -> pd.DataFrame:
    """Every run's ``column`` against step, in long form (variant, seed, step, value), smoothed per run
    over ``window`` steps when given (per-step minibatch loss is noisy). A history without ``step``
    or ``column`` is a DataError naming the run."""
    frames = []
    for (variant, seed), history in histories.items():
        for key in ("step", column):
            if key not in history.columns:
                raise DataError(f"history of {run_name(variant, seed)} has no {key!r} column")
        value = history[column]
        if window:
            value = value.rolling(window, min_periods=1).mean()
        frames.append(pd.DataFrame({"variant": variant, "seed": seed, "step": history["step"], "value": value}))
    if not frames:
        return pd.DataFrame(columns=["variant", "seed", "step", "value"])
    return pd.concat(frames, ignore_index=True)


def collapsed_run(record: dict, num_classes: int) -> bool:
    """A run that did not train (statistics.trained: it died or stalled) or whose loss diverged."""
    if record.get("diverged_at_step") is not None:
        return True
    return not bool(statistics.trained([record["test_accuracy"]], num_classes)[0])


def curve_table(curves: pd.DataFrame, column: str) -> pd.DataFrame:
    """learning_curves' rows as `dvc plots` reads them (template .dvc/plots/by_variant.json): per
    variant and step the mean over the runs that trained (``column``), the band ``column``_low ..
    ``column``_high (mean ± sd within those runs' min-max) and ``runs``, how many runs that is."""
    return pd.DataFrame(
        {
            "step": curves["step"],
            "variant": curves["variant"],
            column: curves["mean"],
            f"{column}_low": curves["low"],
            f"{column}_high": curves["high"],
            "runs": curves["n"],
        }
    )


def confusion_from_pairs(pairs: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """Confusion matrix (rows: true class) from the (actual, predicted) rows of a dvc plots confusion file."""
    table = pd.crosstab(pairs["actual"].astype(str), pairs["predicted"].astype(str))
    return table.reindex(index=list(classes), columns=list(classes), fill_value=0).to_numpy()


def trained_accuracy(
    runs: pd.DataFrame, trained: Sequence[bool], confidence: float = 0.95
) -> dict[str, statistics.MeanInterval]:
    """Per variant with a run that trained: the mean test accuracy of those runs and its percentile
    bootstrap interval (statistics.mean_interval), what accuracy_vs_time.png's diamonds show beside
    the summary's mean over every run. ``trained`` flags each row of ``runs``."""
    kept = runs.loc[np.asarray(trained, dtype=bool)]
    return {
        variant: statistics.mean_interval(group["test_accuracy"].to_numpy(dtype=float), confidence)
        for variant, group in kept.groupby("variant", sort=False)
    }


def _runs(n: int) -> str:
    return "1 run" if n == 1 else f"{n} runs"


def trained_confusions(
    pairs: Mapping[tuple[str, int], pd.DataFrame], trained: Mapping[tuple[str, int], bool], classes: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Each variant's confusion matrix summed over its runs that trained (a run that did not train
    predicts one class: its column would be no confusion at all), and a line per variant saying which
    runs were summed; a variant with no run that trained sums all its runs, and its line says so."""
    by_variant: dict[str, list[tuple[int, pd.DataFrame]]] = {}
    for (variant, seed), frame in pairs.items():
        by_variant.setdefault(variant, []).append((seed, frame))
    matrices, notes = {}, {}
    for variant, runs in by_variant.items():
        kept = [frame for seed, frame in runs if trained.get((variant, seed), True)]
        if kept:
            left = len(runs) - len(kept)
            notes[variant] = f"{_runs(len(kept))} that trained" + (f" ({left} that did not left out)" if left else "")
        else:
            kept = [frame for _, frame in runs]
            notes[variant] = f"no run trained: {_runs(len(runs))} summed, not a trained model's confusions"
        matrices[variant] = confusion_from_pairs(pd.concat(kept), classes)
    return matrices, notes


# --- the whole report -------------------------------------------------------------------------

FEATURE_MAP_IMAGES = 3
LOSS_WINDOW = training.LOSS_WINDOW  # the window MLflow's training metrics use too


@dataclass
class Report:
    """Everything the compare stage writes: tables, Markdown, DVC metrics, curves and figures."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    markdown: str
    metrics: dict[str, dict[str, Any]]
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)


def collapsed_list(records: list[dict], num_classes: int) -> str:
    collapsed = [r for r in records if collapsed_run(r, num_classes)]
    if not collapsed:
        return ""
    died, trained = statistics.DIED_MARGIN / num_classes, statistics.trained_from(num_classes)
    lines = [
        f"\nRuns that did not train, kept in the statistics above: *died* (test accuracy below {died:.0%}: the"
        f" network predicts one class), *stalled* (from {died:.0%} to below {trained:.0%}), or whose loss"
        " diverged:\n"
    ]
    for r in collapsed:
        outcome = statistics.outcomes([r["test_accuracy"]], num_classes)[0]
        line = f"- {run_name(r['variant'], r['seed'])}: {r['test_accuracy']:.2%}, {outcome}"
        if r.get("diverged_at_step") is not None:
            line += f", loss became NaN/inf at step {r['diverged_at_step']}"
        lines.append(line)
    return "\n".join(lines) + "\n"


# reports/summary.json, the only DVC metrics file: per variant, the few numbers `dvc exp show` and
# `dvc metrics diff` compare across experiments (summary.csv keeps every statistic). Short keys: a
# column of `dvc exp show` is as wide as its name, `transposed_regularized.acc` for instance, and the
# accuracy of 8 variants fits one screen only as `acc` (README, "Comparing experiments with DVC").
# Units (README and docs/tracking.md say the same): `acc` and `trained_share` are fractions (0-1, as
# test_accuracy is in every metrics file and MLflow run), `vs_baseline_pp` is in percentage points (the
# unit of summary.md's "vs baseline, pp" column: 100 x the fraction), `train_seconds` in seconds.
# key: (summary column, factor from the column's unit to the key's)
SUMMARY_METRICS = {
    "acc": ("test_accuracy_mean", 1),
    "vs_baseline_pp": ("diff_vs_baseline_mean", 100),
    "trained_share": ("trained_share", 1),
    "train_seconds": ("train_seconds_mean", 1),
}


def _summary_metrics(summary: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """reports/summary.json: per variant the numbers summary.md leads with, under SUMMARY_METRICS'
    keys and units: mean test accuracy (fraction), mean paired difference from the baseline in
    percentage points (NaN for the baseline itself, null in the JSON), share of runs that trained
    (fraction), mean training seconds."""
    return {
        row["variant"]: {key: float(row[column]) * factor for key, (column, factor) in SUMMARY_METRICS.items()}
        for row in summary.to_dict("records")
    }


def image_maps(maps: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The activations that are images (k, h, w, c): upsampling_layer_names also names the layer
    after an upsample, which is a flatten in `upsample_only` and has no picture to show."""
    return {name: array for name, array in maps.items() if np.ndim(array) == 4}


def champion_title(variant: str, record: Mapping[str, Any]) -> str:
    """The feature maps' title: whose model they come from and why that one."""
    return (
        f"{variant}: feature maps after each upsampling layer, {run_name(variant, record['seed'])}, the champion"
        f" (best validation accuracy, {record['val_accuracy'] * 100:.2f}%)"
    )


def build_report(
    outputs: Sequence[RunOutputs], data: Prepared, params: Params, models: Mapping[str, tuple[int, Any]]
) -> Report:
    """The comparison of every variant x seed run: tables, statistics, curves and figures.

    ``models`` maps a variant with upsampling layers to (seed, trained Keras model) of its champion
    (registry.champion: the best seed by validation accuracy), whose feature maps are drawn for a few
    test images. The learning curves (figures and `dvc plots` CSVs) and the confusion matrices are
    over the runs that trained (not collapsed_run), and say so.
    """
    from pipeline import figures
    from pipeline.models import activations, upsampling_layer_names

    records = [o.record for o in outputs]
    runs = runs_table(records, variant_order=list(params.variants))
    summary = summarize(runs, data.num_classes)
    keys = [(o.record["variant"], o.record["seed"]) for o in outputs]
    validations = dict(zip(keys, (o.validation for o in outputs), strict=True))
    histories = dict(zip(keys, (o.history for o in outputs), strict=True))
    trained = {(r["variant"], r["seed"]): not collapsed_run(r, data.num_classes) for r in records}
    val_runs = run_curves(validations, "val_accuracy")
    loss_runs = run_curves(histories, "loss", window=LOSS_WINDOW)
    val_curves = learning_curves(val_runs, trained)
    loss_curves = learning_curves(loss_runs, trained)
    matrices, notes = trained_confusions(
        dict(zip(keys, (o.confusion_pairs for o in outputs), strict=True)), trained, data.classes
    )
    report = Report(
        runs=runs,
        summary=summary,
        markdown=summary_markdown(
            summary, title=f"{data.dataset}, {len(params.train.seeds)} seeds, {params.train.steps} steps"
        )
        + collapsed_list(records, data.num_classes),
        metrics=_summary_metrics(summary),
        curves={"val_accuracy": curve_table(val_curves, "val_accuracy"), "loss": curve_table(loss_curves, "loss")},
    )
    run_trained = [trained[v, s] for v, s in zip(runs["variant"], runs["seed"], strict=True)]
    report.figures = {
        "accuracy_vs_time.png": figures.accuracy_vs_time_figure(
            summary, runs, run_trained, trained_accuracy(runs, run_trained)
        ),
        "learning_curves_val_accuracy.png": figures.learning_curves_figure(
            val_runs, trained, val_curves, "validation accuracy (%)", percent=True
        ),
        "learning_curves_loss.png": figures.learning_curves_figure(
            loss_runs, trained, loss_curves, f"training loss (mean of {LOSS_WINDOW} steps)"
        ),
        "confusion_matrices.png": figures.confusion_matrices_figure(
            matrices,
            data.classes,
            notes,
            title="Confusion matrices of the runs that trained (rows: true class, normalised; counts summed over"
            " those runs)",
        ),
    }
    images = data.x_test[:FEATURE_MAP_IMAGES]
    by_key = dict(zip(keys, records, strict=True))
    for variant, (seed, model) in models.items():
        maps = image_maps(activations(model, upsampling_layer_names(params.variants[variant]), images))
        figure = figures.feature_maps_figure(images, maps, title=champion_title(variant, by_key[variant, seed]))
        report.figures[f"feature_maps_{variant}.png"] = figure
    return report


def main(argv: list[str] | None = None) -> None:
    """`python -m pipeline.reporting reports/comparison.csv --baseline upsample_only`: the summary of a
    finished comparison against another reference variant (a control), printed as Markdown."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.reporting", description=main.__doc__)
    parser.add_argument("runs", help="reports/comparison.csv, written by the compare stage")
    parser.add_argument("--baseline", required=True, help="the variant every other one is compared with")
    parser.add_argument("--classes", type=int, default=10, help="number of classes (chance is 1/classes)")
    args = parser.parse_args(argv)
    runs = runs_table(pd.read_csv(args.runs).to_dict("records"))
    if args.baseline not in set(runs["variant"]):
        raise SystemExit(f"error: {args.baseline!r} is not a variant in {args.runs}")
    print(summary_markdown(summarize(runs, args.classes, baseline=args.baseline)), end="")


if __name__ == "__main__":
    main()
