"""The summary's Markdown (reports/summary.md and the tables of docs/results.md): table cells, the
summary table, the lead line per variant, the list of runs that did not train.

Formats what pipeline/summary_numbers.py computes; no statistics are computed here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from pipeline import statistics
from pipeline.paths import run_name
from pipeline.summary_numbers import collapsed_run, format_p, n_comparisons

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
    return f"the {n_comparisons(m)} with {baseline} ({', '.join(compared)})"


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
            f" over {int(row['trained_pairs'])} pairs ({'Holm ' + format_p(p) if not _isnan(p) else 'untested'})"
        )
    if not _isnan(everything):
        p = row["p_value_adjusted"]
        tested = f"Holm {format_p(p)}: {_established(p, alpha)}" if not _isnan(p) else "untested"
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
            f" {min(floors)[0]:.3g}, so after Holm's adjustment over {n_comparisons(m)} a difference is significant"
            f" only if p x {m} < {alpha:g}."
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


def collapsed_list(records: list[dict], num_classes: int) -> str:
    """The runs that did not train or diverged (collapsed_run: each record has its ``trained``), one
    bullet each with its test accuracy and outcome (died or stalled), under a line defining both; ""
    when every run trained."""
    collapsed = [r for r in records if collapsed_run(r)]
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
