"""The tables of the published results, computed from a per-run table (one row per run, the columns
of results.RESULT_COLUMNS) alone: the summary against a reference, the runs that did not train, the
step-0 losses, when training stopped, the `_bias0` rescues, a protocol's Holm family, the
pixel-scaling family, the README's short table, and a regeneration's agreement with a published CSV.
Pure functions on DataFrames; no I/O."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from pipeline import statistics, summary_numbers, summary_text
from pipeline.errors import DataError
from pipeline.protocols import PROTOCOLS, SCALING, Protocol

NUM_CLASSES = 10  # every dataset of the protocols has 10 classes; results.per_run_table checks it


def missing(value: Any) -> bool:
    """None or NaN: a value a per-run table leaves empty."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _runs(results: pd.DataFrame) -> pd.DataFrame:
    records = [
        {key: (None if missing(v) or v is pd.NA else v) for key, v in record.items()}
        for record in results.to_dict("records")
    ]
    return summary_numbers.runs_table(records, variant_order=list(dict.fromkeys(results["variant"])))


def comparison_table(results: pd.DataFrame, reference: str) -> str:
    """The summary table against `reference`, the kind reports/summary.md has (Wilson intervals on the
    trained share, Fisher's exact p, bootstrap intervals, Holm-adjusted sign-flip p, if both trained)."""
    if reference not in set(results["variant"]):
        raise DataError(f"no variant {reference!r} in these results")
    summary = summary_numbers.summarize(_runs(results), NUM_CLASSES, baseline=reference)
    return summary_text.summary_table_markdown(summary)


def dead_runs(results: pd.DataFrame) -> str:
    """The runs that did not train, one bullet each (summary_text's list)."""
    records = [
        {key: (None if missing(v) or v is pd.NA else v) for key, v in record.items()}
        for record in results.to_dict("records")
    ]
    text = summary_text.collapsed_list(records, NUM_CLASSES).strip()
    return text or "Every run trained."


def _median_range(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "n/a"
    return f"{values.median():.3g} [{values.min():.3g}, {values.max():.3g}]"


def step0_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per variant: runs that trained, the loss at step 0 (median [min, max]) of the runs that trained
    and of those that did not (died or stalled), how many runs diverged, and how many stopped early
    and at which steps."""
    rows = []
    for variant, group in results.groupby("variant", sort=False):
        alive, dead = group[group["trained"]], group[~group["trained"]]
        stopped = group["stopped_early_at"].dropna()
        rows.append(
            {
                "variant": variant,
                "trained": f"{len(alive)}/{len(group)}",
                "step-0 loss, trained: median [range]": _median_range(alive["step0_loss"]),
                "step-0 loss, did not train: median [range]": _median_range(dead["step0_loss"]),
                "diverged (NaN loss)": int(group["diverged_at_step"].notna().sum()),
                "stopped early: runs, at steps": (
                    f"{len(stopped)}/{len(group)}, {', '.join(str(int(s)) for s in sorted(set(stopped)))}"
                    if len(stopped)
                    else f"0/{len(group)}"
                ),
            }
        )
    return pd.DataFrame(rows)


def stopping_table(results: pd.DataFrame, epoch_steps: int, max_steps: int) -> pd.DataFrame:
    """Per variant, when training stopped, in epochs of `epoch_steps` steps (the validation interval):
    runs stopped early by patience, runs that reached the cap of `max_steps` steps, and the epochs
    trained, median [min, max]. A run that stopped early at step s ran s + 1 steps."""
    rows = []
    for variant, group in results.groupby("variant", sort=False):
        epochs = group["steps"].astype(float) / epoch_steps
        rows.append(
            {
                "variant": variant,
                "stopped early": f"{int(group['stopped_early_at'].notna().sum())}/{len(group)}",
                f"reached the cap ({max_steps / epoch_steps:g} epochs)": (
                    f"{int((group['steps'] >= max_steps).sum())}/{len(group)}"
                ),
                "epochs trained: median [range]": _median_range(epochs.round(1)),
            }
        )
    return pd.DataFrame(rows)


def _twins(results: pd.DataFrame, suffix: str = "_bias0") -> list[tuple[str, str]]:
    """(variant, its twin) for every variant whose `<variant><suffix>` is in these results too."""
    names = set(results["variant"])
    return [(v, v + suffix) for v in dict.fromkeys(results["variant"]) if v + suffix in names]


def rescue_table(results: pd.DataFrame, suffix: str = "_bias0") -> pd.DataFrame:
    """Per variant that has a `<variant><suffix>` twin in these results (the same network, biases at 0
    where the tutorial's are 1.0), on the seeds both ran: runs that trained with each, Fisher's exact p
    on the two counts, the median step-0 loss of each; then all of them pooled. Empty when no variant
    has a twin."""
    pairs = _twins(results, suffix)
    if not pairs:
        return pd.DataFrame()
    rows = []
    for label, before, after in [
        *((v, [v], [w]) for v, w in pairs),
        ("all of them", [v for v, _ in pairs], [w for _, w in pairs]),
    ]:
        one, zero = _pooled_runs(results, list(zip(before, after, strict=True)))
        k1, n1, k0, n0 = summary_numbers.trained_counts(one, zero)
        p = statistics.fisher_exact_p_value(k1, n1, k0, n0)
        rows.append(
            {
                "variant": label,
                "trained, tutorial's biases": f"{k1}/{n1}",
                f"trained, {suffix.strip('_')}": f"{k0}/{n0}",
                "Fisher p": f"{p:.2g}",
                "step-0 loss, tutorial's biases: median": f"{one['step0_loss'].median():.3g}",
                f"step-0 loss, {suffix.strip('_')}: median": f"{zero['step0_loss'].median():.3g}",
            }
        )
    return pd.DataFrame(rows)


def _require_variants(results: pd.DataFrame, *names: str) -> None:
    for name in names:
        if name not in set(results["variant"]):
            raise DataError(f"no variant {name!r} in these results")


def _pooled_runs(results: pd.DataFrame, pairs: list[tuple[str, str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of the first and of the second variant of each pair, each pair on the seeds both ran,
    pooled over the pairs."""
    kept = [summary_numbers.variants_on_common_seeds(results, a, b) for a, b in pairs]
    return pd.concat([a for a, _ in kept]), pd.concat([b for _, b in kept])


def _on_common_seeds(results: pd.DataFrame, variant: str, reference: str) -> tuple[np.ndarray, np.ndarray]:
    """The test accuracies of two variants on the seeds both ran, aligned by seed."""
    _require_variants(results, variant, reference)
    a, b = summary_numbers.variants_on_common_seeds(results, variant, reference)
    return a["test_accuracy"].to_numpy(dtype=float), b["test_accuracy"].to_numpy(dtype=float)


def _pp(mean: float, low: float, high: float) -> str:
    return f"{100 * mean:+.2f} pp [{100 * low:+.2f}, {100 * high:+.2f}]"


def family_table(protocol: Protocol, results: pd.DataFrame) -> pd.DataFrame:
    """The protocol's Holm family (Protocol.family), one row per comparison on the seeds both sides
    ran: the result (a paired difference with its bootstrap 95% interval, or runs trained k/n against
    k/n), the seeds where the variant scored higher, the difference over the seeds where both trained
    when that leaves some out, the raw p (sign-flip or Fisher's exact) and the Holm p over the family."""
    rows, p_values = [], []
    for comparison in protocol.family:
        row = {"comparison": comparison.label()}
        if comparison.kind == "accuracy":
            variant, reference = _on_common_seeds(results, comparison.variant, comparison.reference)
            paired = statistics.paired_comparison(variant, reference)
            both = statistics.conditional_comparison(variant, reference, NUM_CLASSES)
            row |= {
                "seeds": str(paired.n),
                "result": _pp(paired.mean_difference, paired.ci_low, paired.ci_high),
                "variant higher": f"{int((variant > reference).sum())}/{paired.n}",
                "if both trained": (
                    "" if both.n == paired.n else f"{_pp(both.mean_difference, both.ci_low, both.ci_high)} ({both.n})"
                ),
            }
            p_values.append(paired.p_value)
        else:
            pairs = (
                [(comparison.variant, comparison.reference)]
                if comparison.kind == "trained"
                else [(twin, v) for v, twin in _twins(results)]
            )
            if not pairs:
                raise DataError(f"{comparison.label()}: no variant here has a `_bias0` twin")
            _require_variants(results, *(name for pair in pairs for name in pair))
            k, n, rk, rn = summary_numbers.trained_counts(*_pooled_runs(results, pairs))
            row |= {
                "seeds": str(n),
                "result": f"{k}/{n} against {rk}/{rn}",
                "variant higher": "",
                "if both trained": "",
            }
            p_values.append(statistics.fisher_exact_p_value(k, n, rk, rn))
        rows.append(row)
    adjusted = statistics.holm(p_values)
    for row, p, holm in zip(rows, p_values, adjusted, strict=True):
        row |= {"p": f"{p:.2g}", f"Holm p (family of {len(rows)})": f"{holm:.2g}"}
    return pd.DataFrame(rows)


def scaling_table(centred: pd.DataFrame, unit: pd.DataFrame) -> pd.DataFrame:
    """The pixel-scaling family of one dataset: per variant both CSVs have, the runs that trained with
    centred pixels and with [0, 1] pixels on the seeds both ran, Fisher's exact p and the Holm p over
    the variants."""
    rows, p_values = [], []
    for variant in [v for v in dict.fromkeys(centred["variant"]) if v in set(unit["variant"])]:
        centred_runs, unit_runs = centred[centred["variant"] == variant], unit[unit["variant"] == variant]
        k, n, uk, un = summary_numbers.trained_counts(*summary_numbers.on_common_seeds(centred_runs, unit_runs))
        rows.append({"variant": variant, "trained, centred": f"{k}/{n}", "trained, [0, 1]": f"{uk}/{un}"})
        p_values.append(statistics.fisher_exact_p_value(k, n, uk, un))
    for row, p, holm in zip(rows, p_values, statistics.holm(p_values), strict=True):
        row |= {"Fisher p": f"{p:.2g}", f"Holm p (family of {len(rows)})": f"{holm:.2g}"}
    return pd.DataFrame(rows)


def families_text() -> str:
    """docs/protocol.md's statement of every Holm family, from PROTOCOLS and SCALING."""
    parts = []
    for protocol in PROTOCOLS.values():
        more = (
            f" Seeds 1-10 for every variant; {protocol.added_seeds[0]}-{protocol.added_seeds[-1]} too for "
            + ", ".join(f"`{v}`" for v in protocol.more_seeds)
            + "."
            if protocol.more_seeds
            else " Seeds 1-10."
        )
        lines = [f"**`{protocol.name}`** ({protocol.title}).{more} Its family, {len(protocol.family)} comparisons:"]
        lines += [f"{n}. {comparison.label()}" for n, comparison in enumerate(protocol.family, 1)]
        parts.append("\n".join(lines))
    for dataset, centred, unit in SCALING.values():
        parts.append(
            f"**Pixel scaling, {dataset}** (`{centred}` against `{unit}`): every variant both ran, its share of"
            " runs that trained with centred pixels against [0, 1] pixels; one comparison per variant."
        )
    return "\n\n".join(parts)


def agreement_table(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Per variant, the trained share (Wilson 95%) and mean test accuracy (bootstrap 95%) of two
    per-run tables of one protocol side by side, and whether each of `after`'s values lies inside
    `before`'s interval (a regeneration's check: the same protocol, other threads or machine)."""
    old = summary_numbers.summarize(_runs(before), NUM_CLASSES).set_index("variant")
    new = summary_numbers.summarize(_runs(after), NUM_CLASSES).set_index("variant")
    rows = []
    for variant in [v for v in old.index if v in new.index]:
        o, n = old.loc[variant], new.loc[variant]
        rows.append(
            {
                "variant": variant,
                "trained before": f"{o.trained_runs}/{o.n_seeds} [{100 * o.trained_share_ci_low:.0f}, "
                f"{100 * o.trained_share_ci_high:.0f}]",
                "trained after": f"{n.trained_runs}/{n.n_seeds}",
                "share inside": bool(o.trained_share_ci_low <= n.trained_share <= o.trained_share_ci_high),
                "mean % before": f"{100 * o.test_accuracy_mean:.2f} [{100 * o.test_accuracy_ci_low:.2f}, "
                f"{100 * o.test_accuracy_ci_high:.2f}]",
                "mean % after": f"{100 * n.test_accuracy_mean:.2f} [{100 * n.test_accuracy_ci_low:.2f}, "
                f"{100 * n.test_accuracy_ci_high:.2f}]",
                "mean inside": bool(o.test_accuracy_ci_low <= n.test_accuracy_mean <= o.test_accuracy_ci_high),
            }
        )
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, disable_numparse=True)


SUMMARY_VARIANTS = ("transposed", "transposed_bias0", "upsample_only", "baseline_wide_bias0")


def _summary_cell(row: pd.Series, reference: pd.Series) -> str:
    share = f"{int(row['trained_runs'])}/{int(row['n_seeds'])}"
    if row["verdict"] == "reference":
        return f"{share}, {row['test_accuracy_mean'] * 100:.2f}%"
    same = (row["trained_runs"], row["n_seeds"]) == (reference["trained_runs"], reference["n_seeds"])
    fisher = "" if missing(row["trained_p_fisher"]) or same else f" (p={row['trained_p_fisher']:.2g})"
    parts = [f"{share}{fisher}"]
    if not missing(row["diff_vs_baseline_mean"]):
        all_runs = summary_text.diff_cell(row["diff_vs_baseline_mean"], row["diff_ci_low"], row["diff_ci_high"], "")
        parts.append(f"**{all_runs}**" if row["significant"] else all_runs)
    if not missing(row["trained_diff_mean"]) and row["trained_pairs"] != row["n_paired_seeds"]:
        both = summary_text.diff_cell(
            row["trained_diff_mean"], row["trained_diff_ci_low"], row["trained_diff_ci_high"], ""
        )
        parts.append(f"both trained {both} ({int(row['trained_pairs'])})")
    return "; ".join(parts)


def summary_table(results: Mapping[str, pd.DataFrame], reference: str = "baseline") -> str:
    """The README's short table: a row per protocol, a column per variant of SUMMARY_VARIANTS that any
    protocol has. A cell: runs that trained (Fisher p against the reference when the shares differ),
    the paired difference in pp over all runs with its 95% interval (bold: Holm p < 0.05), and over the
    seeds where both trained when that leaves some out. Where a protocol's Protocol.same_as says
    another variant is the same network there, the cell is that variant's, marked "= `other`"."""

    def same_as(name: str) -> Mapping[str, str]:
        return PROTOCOLS[name].same_as if name in PROTOCOLS else {}

    present = [
        v for v in SUMMARY_VARIANTS if any({v, same_as(name).get(v)} & set(r["variant"]) for name, r in results.items())
    ]
    rows = []
    for name, table in results.items():
        summary = summary_numbers.summarize(_runs(table), NUM_CLASSES, baseline=reference).set_index("variant")
        row = {"protocol": f"`{name}`", f"`{reference}`": _summary_cell(summary.loc[reference], summary.loc[reference])}
        for variant in present:
            shown = variant if variant in summary.index else same_as(name).get(variant)
            row[f"`{variant}`"] = (
                "not run"
                if shown not in summary.index
                else ("" if shown == variant else f"= `{shown}`: ")
                + _summary_cell(summary.loc[shown], summary.loc[reference])
            )
        rows.append(row)
    return markdown(pd.DataFrame(rows))
