"""The comparison report's numbers: per-run table, per-variant summary with paired tests, learning curves.

Everything here computes on in-memory records and DataFrames; the compare stage reads the metrics
files and writes the CSV/Markdown these functions return.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

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
    "test_accuracy_mean",
    "test_accuracy_std",
    "test_accuracy_ci_low",
    "test_accuracy_ci_high",
    "n_paired_seeds",
    "diff_vs_baseline_mean",
    "diff_ci_low",
    "diff_ci_high",
    "p_value",
    "significant",
    "verdict",
    "train_seconds_mean",
    "train_seconds_std",
    "train_images_per_second_mean",
    "inference_images_per_second_mean",
    "trainable_params",
    "flops_per_image",
    "peak_memory_mb_max",
]

CURVE_COLUMNS = ["variant", "step", "mean", "std", "n"]


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


def _mean_sd_ci(values: np.ndarray, confidence: float) -> tuple[float, float, float, float]:
    """Mean, sample sd (ddof=1) and the Student t interval of the mean; NaN where n is too small."""
    n = len(values)
    if n == 0:
        return (math.nan,) * 4
    mean = float(np.mean(values))
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def _format_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def _verdict(diff_mean: float, p_value: float, n_pairs: int, alpha: float, all_equal: bool) -> str:
    if n_pairs == 0:
        return "no seeds in common with baseline, not enough paired seeds to test"
    pp = f"{diff_mean * 100:+.2f} pp vs baseline"
    if n_pairs == 1:
        return f"{pp} on the only paired seed, not enough paired seeds to test"
    if all_equal:
        return f"{pp}, identical to baseline on all {n_pairs} paired seeds"
    if math.isnan(p_value):
        return f"{pp}, test undefined ({n_pairs} paired seeds)"
    word = "significant" if p_value < alpha else "not significant"
    return f"{pp}, {word} ({_format_p(p_value)}, {n_pairs} paired seeds)"


def summarize(runs: pd.DataFrame, baseline: str = "baseline", confidence: float = 0.95) -> pd.DataFrame:
    """One row per variant (in the order of ``runs``): accuracy with a t interval, a paired
    comparison with ``baseline`` over the seeds both have, and cost columns.

    ``significant`` means the two-sided paired t-test has p < 1 - confidence. The baseline's own
    row has NaN diff columns and verdict "reference". The confidence is kept in ``.attrs``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    alpha = 1 - confidence
    variants = list(dict.fromkeys(runs["variant"]))
    has_baseline = baseline in variants
    base_acc = runs.loc[runs["variant"] == baseline].set_index("seed")["test_accuracy"] if has_baseline else None

    rows = []
    for variant in variants:
        group = runs.loc[runs["variant"] == variant]
        acc = group["test_accuracy"].to_numpy(dtype=float)
        acc_mean, acc_sd, acc_low, acc_high = _mean_sd_ci(acc, confidence)
        row = {
            "variant": variant,
            "n_seeds": len(group),
            "test_accuracy_mean": acc_mean,
            "test_accuracy_std": acc_sd,
            "test_accuracy_ci_low": acc_low,
            "test_accuracy_ci_high": acc_high,
        }

        n_pairs, diff_mean, diff_low, diff_high, p_value = 0, math.nan, math.nan, math.nan, math.nan
        if not has_baseline:
            verdict = "no baseline to compare with"
        elif variant == baseline:
            n_pairs = len(group)
            verdict = "reference"
        else:
            paired = (
                group.set_index("seed")["test_accuracy"]
                .to_frame("variant")
                .join(base_acc.rename("baseline"), how="inner")
            )
            diffs = (paired["variant"] - paired["baseline"]).to_numpy(dtype=float)
            n_pairs = len(diffs)
            diff_mean, _, diff_low, diff_high = _mean_sd_ci(diffs, confidence)
            all_equal = n_pairs >= 2 and bool(np.all(diffs == 0))
            if n_pairs >= 2 and not all_equal:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    p_value = float(stats.ttest_rel(paired["variant"], paired["baseline"]).pvalue)
            verdict = _verdict(diff_mean, p_value, n_pairs, alpha, all_equal)

        row |= {
            "n_paired_seeds": n_pairs,
            "diff_vs_baseline_mean": diff_mean,
            "diff_ci_low": diff_low,
            "diff_ci_high": diff_high,
            "p_value": p_value,
            "significant": bool(not math.isnan(p_value) and p_value < alpha),
            "verdict": verdict,
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


def _diff_cell(mean: float, low: float, high: float, verdict: str) -> str:
    if verdict == "reference":
        return "reference"
    if _isnan(mean):
        return _NA
    if _isnan(low):
        return _pct(mean, sign=True)
    return f"{_pct(mean, sign=True)} {_interval(low, high, sign=True)}"


def summary_markdown(summary: pd.DataFrame, *, title: str | None = None) -> str:
    """The summary as a readable Markdown table plus one verdict bullet per compared variant."""
    confidence = summary.attrs.get("confidence", 0.95)
    baseline = summary.attrs.get("baseline")
    ci = f"{confidence * 100:g}% CI"
    table = pd.DataFrame(
        {
            "variant": summary["variant"],
            "seeds": summary["n_seeds"].astype(str),
            "test accuracy % (mean ± sd)": [
                _mean_pm_sd(m * 100, s * 100, ".2f")
                for m, s in zip(summary["test_accuracy_mean"], summary["test_accuracy_std"], strict=True)
            ],
            f"accuracy {ci}": [
                _interval(lo, hi)
                for lo, hi in zip(summary["test_accuracy_ci_low"], summary["test_accuracy_ci_high"], strict=True)
            ],
            f"vs baseline, pp [{ci}]": [
                _diff_cell(m, lo, hi, verdict)
                for m, lo, hi, verdict in zip(
                    summary["diff_vs_baseline_mean"],
                    summary["diff_ci_low"],
                    summary["diff_ci_high"],
                    summary["verdict"],
                    strict=True,
                )
            ],
            "p-value": [_NA if _isnan(p) else f"{p:.3g}" for p in summary["p_value"]],
            "train s (mean ± sd)": [
                _mean_pm_sd(m, s, ".1f")
                for m, s in zip(summary["train_seconds_mean"], summary["train_seconds_std"], strict=True)
            ],
            "train img/s": [_thousands(v) for v in summary["train_images_per_second_mean"]],
            "inference img/s": [_thousands(v) for v in summary["inference_images_per_second_mean"]],
            "params": [_thousands(v) for v in summary["trainable_params"]],
            "FLOPs/image": [_thousands(v) for v in summary["flops_per_image"]],
            "peak memory MB": [_NA if _isnan(v) else f"{v:,.1f}" for v in summary["peak_memory_mb_max"]],
        }
    )
    numeric = {"seeds", "train img/s", "inference img/s", "params", "FLOPs/image", "peak memory MB"}
    colalign = ["right" if c in numeric else "left" for c in table.columns]

    parts = []
    if title:
        parts.append(f"# {title}\n")
    parts.append(table.to_markdown(index=False, disable_numparse=True, colalign=colalign))
    bullets = [
        f"- **{variant}**: {verdict}"
        for variant, verdict in zip(summary["variant"], summary["verdict"], strict=True)
        if verdict != "reference"
    ]
    if bullets:
        intro = f"Compared with **{baseline}** (paired by seed, two-sided paired t-test, {ci}):"
        parts.append("\n" + (intro + "\n\n" if baseline else "") + "\n".join(bullets))
    return "\n".join(parts) + "\n"


# --- learning curves -------------------------------------------------------------------------


def learning_curves(histories: Mapping[tuple[str, int], pd.DataFrame], column: str) -> pd.DataFrame:
    """Mean, sample sd (ddof=1; NaN where one seed) and seed count of ``column`` at each step,
    per variant, in long form. Variants keep their first-seen order; rows with NaN are dropped."""
    frames = []
    for (variant, seed), history in histories.items():
        for key in ("step", column):
            if key not in history.columns:
                raise DataError(f"history of {variant}/seed-{seed} has no {key!r} column")
        frame = history[["step", column]].dropna(subset=[column])
        frames.append(frame.assign(variant=variant, seed=seed))
    if not frames:
        return pd.DataFrame(columns=CURVE_COLUMNS)

    long = pd.concat(frames, ignore_index=True)
    order = {v: i for i, v in enumerate(dict.fromkeys(variant for variant, _ in histories))}
    curves = (
        long.groupby(["variant", "step"], sort=False)[column]
        .agg(mean="mean", std=lambda s: s.std(ddof=1), n="count")
        .reset_index()
    )
    curves["n"] = curves["n"].astype("int64")
    curves = curves.assign(_rank=curves["variant"].map(order)).sort_values(["_rank", "step"], kind="stable")
    return curves.drop(columns="_rank").reset_index(drop=True)[CURVE_COLUMNS]


def collapsed_run(record: dict, num_classes: int) -> bool:
    """A run that ended at chance level: it predicts (almost) one class, whatever it was shown."""
    return record.get("diverged_at_step") is not None or record["test_accuracy"] < 1.5 / num_classes


def curve_table(curves: pd.DataFrame, column: str) -> pd.DataFrame:
    """Long-form learning curve for `dvc plots` (template .dvc/plots/by_variant.json): mean and a
    mean +/- sd band per variant and step."""
    spread = curves["std"].fillna(0.0)
    return pd.DataFrame(
        {
            "step": curves["step"],
            "variant": curves["variant"],
            column: curves["mean"],
            f"{column}_low": curves["mean"] - spread,
            f"{column}_high": curves["mean"] + spread,
        }
    )


def confusion_from_pairs(pairs: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """Confusion matrix (rows: true class) from the (actual, predicted) rows of a dvc plots confusion file."""
    table = pd.crosstab(pairs["actual"].astype(str), pairs["predicted"].astype(str))
    return table.reindex(index=list(classes), columns=list(classes), fill_value=0).to_numpy()


def rolling_mean(curves: pd.DataFrame, window: int = 20) -> pd.DataFrame:
    """Learning curves smoothed per variant over `window` steps (per-step minibatch loss is noisy)."""
    curves = curves.copy()
    for column in ("mean", "std"):
        curves[column] = curves.groupby("variant")[column].transform(lambda s: s.rolling(window, min_periods=1).mean())
    return curves


# --- the whole report -------------------------------------------------------------------------

FEATURE_MAP_IMAGES = 3


@dataclass
class Report:
    """Everything the compare stage writes: tables, Markdown, DVC metrics, curves and figures."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    markdown: str
    metrics: dict[str, dict[str, Any]]
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)


def _collapsed_list(records: list[dict], num_classes: int) -> str:
    collapsed = [r for r in records if collapsed_run(r, num_classes)]
    if not collapsed:
        return ""
    lines = [
        f"\nRuns that ended at chance level (test accuracy below {1.5 / num_classes:.0%}: the network"
        " predicts one class; kept in the statistics above):\n"
    ]
    for r in collapsed:
        line = f"- {run_name(r['variant'], r['seed'])}: {r['test_accuracy']:.2%}"
        if r.get("diverged_at_step") is not None:
            line += f", loss became NaN/inf at step {r['diverged_at_step']}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _summary_metrics(summary: pd.DataFrame, records: list[dict], num_classes: int) -> dict[str, dict[str, Any]]:
    """reports/summary.json (the DVC metrics): per variant, what a user compares across experiments."""
    return {
        row.variant: {
            "test_accuracy_mean": row.test_accuracy_mean,
            "test_accuracy_std": row.test_accuracy_std,
            "diff_vs_baseline_mean": row.diff_vs_baseline_mean,
            "p_value": row.p_value,
            "train_seconds_mean": row.train_seconds_mean,
            "diverged_runs": sum(
                1 for r in records if r["variant"] == row.variant and r.get("diverged_at_step") is not None
            ),
            "collapsed_runs": sum(1 for r in records if r["variant"] == row.variant and collapsed_run(r, num_classes)),
        }
        for row in summary.itertuples()
    }


def build_report(outputs: Sequence[RunOutputs], data: Prepared, params: Params, models: Mapping[str, Any]) -> Report:
    """The comparison of every variant x seed run: tables, statistics, curves and figures.

    ``models`` maps a variant with upsampling layers to one trained Keras model (its first seed),
    whose feature maps are drawn for a few test images.
    """
    from pipeline import figures
    from pipeline.models import activations, upsampling_layer_names

    records = [o.record for o in outputs]
    runs = runs_table(records, variant_order=list(params.variants))
    summary = summarize(runs)
    keys = [(o.record["variant"], o.record["seed"]) for o in outputs]
    val_curves = learning_curves(dict(zip(keys, (o.validation for o in outputs), strict=True)), "val_accuracy")
    loss_curves = rolling_mean(learning_curves(dict(zip(keys, (o.history for o in outputs), strict=True)), "loss"))
    matrices: dict[str, list[pd.DataFrame]] = {}
    for key, o in zip(keys, outputs, strict=True):
        matrices.setdefault(key[0], []).append(o.confusion_pairs)
    report = Report(
        runs=runs,
        summary=summary,
        markdown=summary_markdown(
            summary, title=f"{data.dataset}, {len(params.train.seeds)} seeds, {params.train.steps} steps"
        )
        + _collapsed_list(records, data.num_classes),
        metrics=_summary_metrics(summary, records, data.num_classes),
        curves={"val_accuracy": curve_table(val_curves, "val_accuracy"), "loss": curve_table(loss_curves, "loss")},
    )
    report.figures = {
        "accuracy_vs_time.png": figures.accuracy_vs_time_figure(summary),
        "learning_curves_val_accuracy.png": figures.learning_curves_figure(val_curves, "validation accuracy"),
        "learning_curves_loss.png": figures.learning_curves_figure(loss_curves, "training loss (mean of 20 steps)"),
        "confusion_matrices.png": figures.confusion_matrices_figure(
            {v: confusion_from_pairs(pd.concat(p), data.classes) for v, p in matrices.items()}, data.classes
        ),
    }
    images = data.x_test[:FEATURE_MAP_IMAGES]
    for variant, model in models.items():
        maps = activations(model, upsampling_layer_names(params.variants[variant]), images)
        figure = figures.feature_maps_figure(images, maps)
        figure.suptitle(f"{variant}: feature maps after each upsampling layer (each panel scaled to its own range)")
        report.figures[f"feature_maps_{variant}.png"] = figure
    return report
