"""The published results: the protocols that make them, one CSV of per-run numbers per protocol, and the
tables of docs/results.md and README.md regenerated from those CSVs alone.

    python -m pipeline.results commands [PROTOCOL ...]   # each protocol's setup and grid command
    python -m pipeline.results run [PROTOCOL ...]        # `make results`: each protocol as a grid, then tables
    python -m pipeline.results collect PROTOCOL          # a `dvc exp run`'s runs in the workspace -> the CSV
    python -m pipeline.results add PROTOCOL RUNS.csv     # a grid's runs added to the protocol's CSV
    python -m pipeline.results tables                    # docs/results/*.csv -> the marked tables
    python -m pipeline.results agree BEFORE.csv AFTER.csv  # a regeneration against the published CSV

The protocols are defined once, in PROTOCOLS. A protocol's settings are `dvc exp run -S` values on top of
params.yaml as committed; variants kept or added for one protocol only are settings too
(`~variants.NAME`, `+variants.NAME={...}`), so params.yaml stays the one list of variants.

Tables go between marker comments, so the prose around them stays: `<!-- results:NAME:start -->` and
`<!-- results:NAME:end -->`, where NAME is one of
- `PROTOCOL`: everything below for that protocol, in order;
- `PROTOCOL:command`: the commands that produced its CSV;
- `PROTOCOL:family`: its Holm family (protocols.Protocol.family), the comparisons its verdict cites;
- `PROTOCOL:vs-VARIANT`: the summary table against VARIANT (summary_text.summary_table_markdown);
- `PROTOCOL:dead-runs`: the runs that did not train;
- `PROTOCOL:step0`: the loss at step 0 of the runs that trained and of those that died, and where runs stopped;
- `PROTOCOL:rescue`: each variant against its `_bias0` twin (biases 0 where the tutorial's are 1.0),
  runs that trained with Fisher's exact p, and pooled;
- `PROTOCOL:stopping` (not in `PROTOCOL`'s list): in epochs, when each variant's runs stopped, early or
  at the cap (for protocols with early stopping);
- `summary`: the README's short table, one row per protocol;
- `scaling:NAME`: the pixel-scaling family of a dataset (NAME: a key of protocols.SCALING);
- `families`: every family, stated (docs/protocol.md).
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline import statistics, summary_numbers, summary_text
from pipeline.errors import DataError
from pipeline.protocols import (
    GRID_SETTINGS,
    GRIDS,
    MORE_SEEDS,
    PROTOCOLS,
    SCALING,
    Protocol,
    experiment_command,
    experiment_settings,
    grid_command,
    more_seeds_command,
    more_seeds_out,
    shell_line,
)

if TYPE_CHECKING:
    from pipeline.artifacts import RunOutputs
    from pipeline.config import Params

NUM_CLASSES = 10  # every dataset of the protocols has 10 classes; collect checks it
RESULTS_DIR = Path("docs/results")
TABLE_FILES = (Path("docs/results.md"), Path("README.md"), Path("docs/protocol.md"))

# --- per-run CSVs ----------------------------------------------------------------------------------

# the numbers behind every table: the report's per-run columns plus what explains a run's fate
RESULT_COLUMNS = [
    "variant",
    "seed",
    "test_accuracy",
    "test_loss",
    "trained",
    "step0_loss",
    "steps",
    "stopped_early_at",
    "diverged_at_step",
    "val_accuracy",
    "train_seconds",
    *(
        c
        for c in summary_numbers.RUN_COLUMNS
        if c not in ("variant", "seed", "test_accuracy", "test_loss", "val_accuracy", "train_seconds")
    ),
    "threads",  # train.threads; empty in CSVs made before it existed (TensorFlow's default: one per core)
]
_NULLABLE_INT = ["steps", "stopped_early_at", "diverged_at_step", "threads"]


def per_run_table(outputs: Sequence[RunOutputs]) -> pd.DataFrame:
    """One row per run with RESULT_COLUMNS: the record of run.json and the metrics JSON, whether it
    trained (statistics.trained), and step0_loss, the training loss of the first step (history.csv's
    first row: the loss of the initial weights on the first batch). No I/O."""
    rows = []
    for output in outputs:
        record = output.record
        classes = len(record.get("per_class_accuracy") or {}) or NUM_CLASSES
        if classes != NUM_CLASSES:
            raise DataError(
                f"{record['variant']}/seed-{record['seed']}: {classes} classes, the tables assume {NUM_CLASSES}"
            )
        history = output.history
        step0 = float(history["loss"].iloc[0]) if len(history) else math.nan
        row = {key: record.get(key) for key in RESULT_COLUMNS}
        row["trained"] = bool(statistics.trained([record["test_accuracy"]], NUM_CLASSES)[0])
        row["step0_loss"] = step0
        rows.append(row)
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    for column in _NULLABLE_INT:
        table[column] = pd.array([None if _missing(v) else int(v) for v in table[column]], dtype="Int64")
    return table


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def collect(
    params: Params,
    models: Path = Path("models"),
    metrics: Path = Path("metrics"),
    plots: Path = Path("plots"),
) -> pd.DataFrame:
    """The per-run table of every variant x seed that params.yaml names, read from the workspace."""
    from pipeline.artifacts import read_run_outputs

    outputs = [
        read_run_outputs(variant, seed, models, metrics, plots)
        for variant in params.variants
        for seed in params.train.seeds
    ]
    return per_run_table(outputs)


def read_results(path: Path) -> pd.DataFrame:
    """A per-run CSV as written by collect (typed: nullable integers stay integers)."""
    table = pd.read_csv(path, dtype={"variant": str, "run_id": str})
    if "threads" not in table.columns:  # made before train.threads existed
        table["threads"] = pd.NA
    missing = [c for c in RESULT_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path}: no column {', '.join(missing)}; write it with `python -m pipeline.results collect`")
    for column in _NULLABLE_INT:
        table[column] = table[column].astype("Int64")
    # from the accuracy, not the column: a CSV written before runs could stall counts them as trained
    table["trained"] = statistics.trained(table["test_accuracy"], NUM_CLASSES)
    return table[RESULT_COLUMNS]


def add_runs(table: pd.DataFrame, more: pd.DataFrame) -> pd.DataFrame:
    """`table` with the runs of `more` (a grid's runs.csv) after it; a variant x seed in both is refused."""
    both = table.merge(more, on=["variant", "seed"])[["variant", "seed"]]
    if len(both):
        shown = ", ".join(f"{v}/seed-{s}" for v, s in both.itertuples(index=False))
        raise DataError(f"runs already in the CSV: {shown}")
    return pd.concat([table, more[RESULT_COLUMNS]], ignore_index=True)


# --- tables ----------------------------------------------------------------------------------------


def _runs(results: pd.DataFrame) -> pd.DataFrame:
    records = [
        {key: (None if _missing(v) or v is pd.NA else v) for key, v in record.items()}
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
        {key: (None if _missing(v) or v is pd.NA else v) for key, v in record.items()}
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
    and of those that died, how many runs diverged, and how many stopped early and at which steps."""
    rows = []
    for variant, group in results.groupby("variant", sort=False):
        alive, dead = group[group["trained"]], group[~group["trained"]]
        stopped = group["stopped_early_at"].dropna()
        rows.append(
            {
                "variant": variant,
                "trained": f"{len(alive)}/{len(group)}",
                "step-0 loss, trained: median [range]": _median_range(alive["step0_loss"]),
                "step-0 loss, died: median [range]": _median_range(dead["step0_loss"]),
                "diverged (NaN loss)": int(group["diverged_at_step"].notna().sum()),
                "stopped early: runs, at steps": (
                    f"{len(stopped)}/{len(group)}, {', '.join(str(int(s)) for s in sorted(set(stopped)))}"
                    if len(stopped)
                    else f"0/{len(group)}"
                ),
            }
        )
    return pd.DataFrame(rows)


def _setting(protocol: Protocol, key: str) -> str | None:
    """The value the protocol's `-S` settings give `key` (None: params.yaml's)."""
    values = [s.partition("=")[2] for s in protocol.settings if s.partition("=")[0] == key]
    return values[-1] if values else None


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
        kept = [_common_runs(results, v, w) for v, w in zip(before, after, strict=True)]
        one = pd.concat([a for a, _ in kept])
        zero = pd.concat([b for _, b in kept])
        k1, n1, k0, n0 = int(one["trained"].sum()), len(one), int(zero["trained"].sum()), len(zero)
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


def _common_runs(results: pd.DataFrame, variant: str, other: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of two variants on the seeds both ran, each in seed order."""
    a = results[results["variant"] == variant].set_index("seed")
    b = results[results["variant"] == other].set_index("seed")
    seeds = a.index.intersection(b.index).sort_values()
    return a.loc[seeds], b.loc[seeds]


def _on_common_seeds(results: pd.DataFrame, variant: str, reference: str) -> tuple[np.ndarray, np.ndarray]:
    """The test accuracies of two variants on the seeds both ran, aligned by seed."""
    for name in (variant, reference):
        if name not in set(results["variant"]):
            raise DataError(f"no variant {name!r} in these results")
    a, b = _common_runs(results, variant, reference)
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
            for v, r in pairs:
                _on_common_seeds(results, v, r)  # both variants are there
            kept = [_common_runs(results, v, r) for v, r in pairs]
            one, other = pd.concat([a for a, _ in kept]), pd.concat([b for _, b in kept])
            k, n, rk, rn = int(one["trained"].sum()), len(one), int(other["trained"].sum()), len(other)
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
        a = centred[centred["variant"] == variant].set_index("seed")["trained"]
        b = unit[unit["variant"] == variant].set_index("seed")["trained"]
        seeds = a.index.intersection(b.index)
        k, n, uk, un = int(a[seeds].sum()), len(seeds), int(b[seeds].sum()), len(seeds)
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
            f" Seeds 1-10 for every variant; {MORE_SEEDS[0]}-{MORE_SEEDS[-1]} too for "
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


def _markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, disable_numparse=True)


SUMMARY_VARIANTS = ("transposed", "transposed_bias0", "upsample_only", "baseline_wide_bias0")


def _summary_cell(row: pd.Series, reference: pd.Series) -> str:
    share = f"{int(row['trained_runs'])}/{int(row['n_seeds'])}"
    if row["verdict"] == "reference":
        return f"{share}, {row['test_accuracy_mean'] * 100:.2f}%"
    same = (row["trained_runs"], row["n_seeds"]) == (reference["trained_runs"], reference["n_seeds"])
    fisher = "" if _missing(row["trained_p_fisher"]) or same else f" (p={row['trained_p_fisher']:.2g})"
    parts = [f"{share}{fisher}"]
    if not _missing(row["diff_vs_baseline_mean"]):
        all_runs = summary_text.diff_cell(row["diff_vs_baseline_mean"], row["diff_ci_low"], row["diff_ci_high"], "")
        parts.append(f"**{all_runs}**" if row["significant"] else all_runs)
    if not _missing(row["trained_diff_mean"]) and row["trained_pairs"] != row["n_paired_seeds"]:
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
    return _markdown(pd.DataFrame(rows))


def protocol_block(protocol: Protocol, results: pd.DataFrame, part: str | None, command: str) -> str:
    """The Markdown of one marker block of a protocol (see the module's docstring)."""
    if part == "command":
        return f"```bash\n{command}\n```"
    if part == "dead-runs":
        return dead_runs(results)
    if part == "step0":
        return _markdown(step0_table(results))
    if part == "stopping":
        every, steps = _setting(protocol, "train.validation_every"), _setting(protocol, "train.steps")
        if every is None or steps is None:
            raise DataError(f"results:{protocol.name}:stopping: the protocol sets no train.validation_every/steps")
        return _markdown(stopping_table(results, int(every), int(steps)))
    if part == "family":
        return _markdown(family_table(protocol, results)) if protocol.family else "This protocol states no family."
    if part == "rescue":
        table = rescue_table(results)
        return _markdown(table) if not table.empty else "No variant here has a `_bias0` twin."
    if part and part.startswith("vs-"):
        return comparison_table(results, part[3:])
    if part is None:
        references = [r for r in protocol.references if r in set(results["variant"])]
        blocks = [protocol_block(protocol, results, "command", command)]
        blocks.append(protocol_block(protocol, results, "family", command))
        blocks.append(protocol_block(protocol, results, f"vs-{references[0]}", command))
        blocks.append(protocol_block(protocol, results, "dead-runs", command))
        blocks.append(protocol_block(protocol, results, "step0", command))
        blocks.append(protocol_block(protocol, results, "rescue", command))
        blocks += [protocol_block(protocol, results, f"vs-{r}", command) for r in references[1:]]
        return "\n\n".join(blocks)
    raise DataError(
        f"results:{protocol.name}:{part}: unknown table; known: command, family, vs-VARIANT, dead-runs, step0,"
        " rescue, stopping"
    )


_MARKER = re.compile(
    r"<!-- results:(?P<name>[A-Za-z0-9_:.-]+?):start -->\n(?P<body>.*?)<!-- results:(?P=name):end -->", re.S
)


def fill_blocks(text: str, render: Any) -> tuple[str, list[str]]:
    """`text` with every results marker block replaced by render(name) (None: left as it is), and the
    names left as they were."""
    left: list[str] = []

    def replace(match: re.Match) -> str:
        name = match.group("name")
        body = render(name)
        if body is None:
            left.append(name)
            return match.group(0)
        return f"<!-- results:{name}:start -->\n{body.rstrip()}\n<!-- results:{name}:end -->"

    return _MARKER.sub(replace, text), left


def commands(protocol: Protocol, params: Params, results: pd.DataFrame | None = None) -> str:
    """The shell lines that produce a protocol's CSV: its grid (what `make results` runs), or, for a
    CSV whose first runs record no `threads` (made before the grid, with TensorFlow's default
    threads), the `dvc exp run` and `collect` that made them; then, for a protocol with more_seeds
    (unless `results` has none of them yet), the grid of MORE_SEEDS and the `add` of its runs."""
    lines = [shell_line(protocol.setup)] if protocol.setup else []
    first = None if results is None else results[~results["seed"].isin(MORE_SEEDS)]
    if first is not None and first["threads"].isna().all():
        lines.append(shell_line(experiment_command(protocol, params)))
        lines.append(f"python -m pipeline.results collect {protocol.name}")
    else:
        lines.append(shell_line(grid_command(protocol, params)))
        lines.append(f"cp {GRIDS / protocol.name / 'runs.csv'} {RESULTS_DIR / protocol.name}.csv")
    if protocol.more_seeds and (results is None or results["seed"].isin(MORE_SEEDS).any()):
        lines.append(shell_line(more_seeds_command(protocol, params)))
        lines.append(f"python -m pipeline.results add {protocol.name} {more_seeds_out(protocol) / 'runs.csv'}")
    return "\n".join(lines)


def render_tables(files: Sequence[Path], results_dir: Path, params: Params) -> dict[Path, list[str]]:
    """Fill the marker blocks of `files` from the CSVs in results_dir; returns the blocks left as they
    were (their protocol has no CSV yet) per file."""
    cache: dict[str, pd.DataFrame | None] = {}

    def results_of(name: str) -> pd.DataFrame | None:
        if name not in cache:
            path = results_dir / f"{name}.csv"
            cache[name] = read_results(path) if path.is_file() else None
        return cache[name]

    def render(name: str) -> str | None:
        if name == "families":
            return families_text()
        if name.startswith("scaling:"):
            dataset = name.partition(":")[2]
            if dataset not in SCALING:
                raise DataError(f"results:{name}: no dataset {dataset!r}; known: {', '.join(SCALING)}")
            centred, unit = (results_of(p) for p in SCALING[dataset][1:])
            return None if centred is None or unit is None else _markdown(scaling_table(centred, unit))
        if name == "summary":
            available = {p: results_of(p) for p in PROTOCOLS}
            available = {p: r for p, r in available.items() if r is not None}
            return summary_table(available) if available else None
        protocol_name, _, part = name.partition(":")
        if protocol_name not in PROTOCOLS:
            raise DataError(f"results:{name}: no protocol {protocol_name!r}; known: {', '.join(PROTOCOLS)}")
        results = results_of(protocol_name)
        if results is None:
            return None
        protocol = PROTOCOLS[protocol_name]
        return protocol_block(protocol, results, part or None, commands(protocol, params, results))

    left = {}
    for path in files:
        text = Path(path).read_text()
        new, left[Path(path)] = fill_blocks(text, render)
        if new != text:
            Path(path).write_text(new)
    return left


# --- running the protocols -------------------------------------------------------------------------


def run_protocol(protocol: Protocol, params_path: Path = Path("params.yaml"), results_dir: Path = RESULTS_DIR) -> Path:
    """Set up the data, run the protocol as a grid (grids/<protocol>/: a rerun resumes it), write its
    CSV. params.yaml is not changed: the protocol's settings apply to the grid alone."""
    from pipeline.config import load_params
    from pipeline.grid.driver import run_grid
    from pipeline.grid.spec import apply_settings

    params = load_params(params_path)
    if protocol.setup:
        subprocess.run([sys.executable, *protocol.setup[1:]], check=True)
    grid_params = apply_settings(params_path, [*experiment_settings(protocol, params), *GRID_SETTINGS])
    table = run_grid(grid_params, list(grid_params.variants), grid_params.train.seeds, GRIDS / protocol.name)
    if protocol.more_seeds:
        more = run_grid(grid_params, list(protocol.more_seeds), list(MORE_SEEDS), more_seeds_out(protocol))
        table = add_runs(table, more)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{protocol.name}.csv"
    table.to_csv(path, index=False)
    return path


def _protocols(names: Sequence[str]) -> list[Protocol]:
    unknown = [name for name in names if name not in PROTOCOLS]
    if unknown:
        raise SystemExit(f"error: no protocol {', '.join(unknown)}; known: {', '.join(PROTOCOLS)}")
    return [PROTOCOLS[name] for name in names] if names else list(PROTOCOLS.values())


def main(argv: list[str] | None = None) -> None:
    import argparse

    from pipeline.config import load_params

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.results", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help=f"the per-run CSVs (default: {RESULTS_DIR})")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("commands", "print each protocol's commands"), ("run", "run, collect, then tables")):
        sub.add_parser(name, help=text).add_argument("protocols", nargs="*", help="default: all")
    sub.add_parser("collect", help="the workspace's runs -> CSV").add_argument("protocol", choices=list(PROTOCOLS))
    add = sub.add_parser("add", help="a grid's runs.csv -> added to the protocol's CSV")
    add.add_argument("protocol", choices=list(PROTOCOLS))
    add.add_argument("runs", type=Path, help="the grid's runs.csv")
    agree = sub.add_parser("agree", help="two CSVs of one protocol side by side: does the second agree?")
    agree.add_argument("before", type=Path)
    agree.add_argument("after", type=Path)
    tables = sub.add_parser("tables", help="the CSVs -> the marked tables")
    tables.add_argument("files", nargs="*", type=Path, default=list(TABLE_FILES))
    args = parser.parse_args(argv)

    params = load_params(args.params)
    if args.command == "agree":
        print(_markdown(agreement_table(read_results(args.before), read_results(args.after))))
        return
    if args.command == "commands":
        for protocol in _protocols(args.protocols):
            print(f"# {protocol.name}: {protocol.title}\n{commands(protocol, params)}\n")
        return
    if args.command == "collect":
        args.results.mkdir(parents=True, exist_ok=True)
        path = args.results / f"{args.protocol}.csv"
        collect(params).to_csv(path, index=False)
        print(f"{path}: {len(read_results(path))} runs", file=sys.stderr)
        return
    if args.command == "add":
        path = args.results / f"{args.protocol}.csv"
        table = add_runs(read_results(path), read_results(args.runs))
        table.to_csv(path, index=False)
        print(f"{path}: {len(table)} runs", file=sys.stderr)
        return
    if args.command == "run":
        for protocol in _protocols(args.protocols):
            print(f"== {protocol.name}: {protocol.title}", file=sys.stderr, flush=True)
            print(f"{run_protocol(protocol, args.params, args.results)} written", file=sys.stderr)
        args.files = list(TABLE_FILES)
    for path in args.files:
        if not _MARKER.search(Path(path).read_text()):
            print(
                f"{path}: no <!-- results:NAME:start --> ... <!-- results:NAME:end --> block to fill", file=sys.stderr
            )
    for path, left in render_tables(args.files, args.results, params).items():
        for name in left:
            print(
                f"{path}: results:{name} left as it was ({args.results}/{name.split(':')[0]}.csv not there)",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
