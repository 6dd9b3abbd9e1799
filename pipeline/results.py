"""The published results: the protocols that make them, one CSV of per-run numbers per protocol, and the
tables of docs/results.md and README.md regenerated from those CSVs alone.

    python -m pipeline.results commands [PROTOCOL ...]   # each protocol's setup and grid command
    python -m pipeline.results run [PROTOCOL ...]        # `make results`: each protocol as a grid, then tables
    python -m pipeline.results collect PROTOCOL          # a `dvc exp run`'s runs in the workspace -> the CSV
    python -m pipeline.results tables                    # docs/results/*.csv -> the marked tables
    python -m pipeline.results agree BEFORE.csv AFTER.csv  # a regeneration against the published CSV

The protocols are defined once, in PROTOCOLS. A protocol's settings are `dvc exp run -S` values on top of
params.yaml as committed; variants kept or added for one protocol only are settings too
(`~variants.NAME`, `+variants.NAME={...}`), so params.yaml stays the one list of variants.

Tables go between marker comments, so the prose around them stays: `<!-- results:NAME:start -->` and
`<!-- results:NAME:end -->`, where NAME is one of
- `PROTOCOL`: everything below for that protocol, in order;
- `PROTOCOL:command`: the commands that produced its CSV;
- `PROTOCOL:vs-VARIANT`: the summary table against VARIANT (reporting.summary_table_markdown);
- `PROTOCOL:dead-runs`: the runs that did not train;
- `PROTOCOL:step0`: the loss at step 0 of the runs that trained and of those that died, and where runs stopped;
- `PROTOCOL:rescue`: each variant against its `_bias0` twin (biases 0 where the tutorial's are 1.0),
  runs that trained with Fisher's exact p, and pooled;
- `PROTOCOL:stopping` (not in `PROTOCOL`'s list): in epochs, when each variant's runs stopped, early or
  at the cap (for protocols with early stopping);
- `summary`: the README's short table, one row per protocol.
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline import reporting, statistics
from pipeline.errors import DataError

if TYPE_CHECKING:
    from pipeline.artifacts import RunOutputs
    from pipeline.config import Params

NUM_CLASSES = 10  # every dataset of the protocols has 10 classes; collect checks it
RESULTS_DIR = Path("docs/results")
TABLE_FILES = (Path("docs/results.md"), Path("README.md"))

# --- the protocols ---------------------------------------------------------------------------------

SEEDS = "train.seeds=[1,2,3,4,5,6,7,8,9,10]"
FASHION_MNIST = ("data.dataset=fashion_mnist", "data.mirrors=[/usr/share/datasets/fashion-mnist]")
# scripts/mnist_digits.py with its defaults (seed 0) writes these four files, byte for byte
DIGITS_SHA256 = {
    "train-images-idx3-ubyte.gz": "cd3bdce608aa2355015672e8684c798e67b58458810e89c3ddc92f53ca4e180a",
    "train-labels-idx1-ubyte.gz": "55fde0c5cfa88cb294b276cd315d30d8cd8fd8a52fde39a9d1bbedba88050f20",
    "t10k-images-idx3-ubyte.gz": "e33cd041f9b4f4129296d0965e9045333be92603160a908c814d10716cebb91d",
    "t10k-labels-idx1-ubyte.gz": "a2314c7e910f1ad8eb7577d2fbab18ec7077a881b55c860affab49a18cbb04c9",
}
MNIST_DIGITS = (
    "data.dataset=mnist_t10k_split",
    "data.mirrors=[data/mnist-digits-source]",
    "++data.sha256={" + ", ".join(f"{name}: {digest}" for name, digest in DIGITS_SHA256.items()) + "}",
    "data.validation_size=1000",
)
DIGITS_SETUP = ("python", "scripts/mnist_digits.py", "--out", "data/mnist-digits-source")
# the tutorial's training, spelled out so that a change of params.yaml's defaults cannot change a protocol
TUTORIAL = (
    "train.optimizer=sgd",
    "train.learning_rate=0.05",
    "train.batch_size=16",
    "train.steps=1001",
    "train.validation_every=100",
    "train.initializer=tutorial",
    "train.early_stopping_patience=null",
)
CONVERGE = (
    "train.optimizer=adam",
    "train.learning_rate=0.001",
    "train.batch_size=64",
    # up to 15 epochs of the 55,000 training images at batch 64 (860 steps each); 8, the earlier cap,
    # stopped baseline while its validation accuracy still rose (0.9024 -> 0.9054 in its last epoch)
    "train.steps=12900",
    "train.validation_every=860",
    "train.early_stopping_patience=2",
    "train.initializer=keras",
)
DIGITS_VARIANTS = ("baseline", "transposed", "transposed_bias0", "upsample_only", "baseline_wide", "resize_conv")
# the bias-1.0 hypothesis tried on every variant that dies: as transposed_bias0 does for transposed,
# bias_init 0.0 on every convolution after the first (the tutorial's 1.0 stays on the dense layers)
RESCUES: dict[str, tuple[str, Mapping[int, Mapping[str, Any]]]] = {
    f"{base}_bias0": (base, {n: {"bias_init": 0.0} for n in layers})
    for base, layers in (
        ("transposed_deep", (2, 3, 4)),
        ("transposed_k4", (2,)),
        ("resize_conv", (3,)),
        ("transposed_regularized", (2,)),
        ("baseline_wide", (2,)),
    )
}
DIGITS_RESCUES = {name: RESCUES[name] for name in ("resize_conv_bias0", "baseline_wide_bias0")}
# where the rescues run, the capacity control is baseline_wide_bias0: baseline_wide dies now and then
RESCUE_REFERENCES = ("baseline", "upsample_only", "baseline_wide_bias0")


@dataclass(frozen=True)
class Protocol:
    """A named DVC experiment: its `-S` settings on top of params.yaml, which variants it keeps
    (None: all of params.yaml's), the variants it adds (name -> (base variant, {layer number counted
    from 1: {key: value}})), the command that makes its data first, and the references its tables
    compare with."""

    name: str
    title: str
    settings: tuple[str, ...]
    variants: tuple[str, ...] | None = None
    extra_variants: Mapping[str, tuple[str, Mapping[int, Mapping[str, Any]]]] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    references: tuple[str, ...] = ("baseline", "upsample_only", "baseline_wide")
    leave_out: tuple[str, ...] = ()  # variants removed from all of params.yaml's (with variants=None)
    # variants this protocol need not run because another is the same network here ({name: the other})
    same_as: Mapping[str, str] = field(default_factory=dict)


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            "tutorial-centered",
            "Fashion-MNIST, the tutorial's protocol, pixels centred",
            (*FASHION_MNIST, "data.scaling=centered", *TUTORIAL, SEEDS),
            extra_variants=RESCUES,
            references=RESCUE_REFERENCES,
        ),
        Protocol(
            "tutorial-unit",
            "Fashion-MNIST, the tutorial's protocol, pixels in [0, 1]",
            (*FASHION_MNIST, "data.scaling=unit", *TUTORIAL, SEEDS),
            extra_variants=RESCUES,
            references=RESCUE_REFERENCES,
        ),
        Protocol(
            "converge",
            "Fashion-MNIST, trained to convergence (Adam)",
            (*FASHION_MNIST, "data.scaling=centered", *CONVERGE, SEEDS),
            # Keras' initialiser already starts every bias at 0: transposed_bias0 would repeat transposed exactly
            leave_out=("transposed_bias0",),
            references=("baseline", "upsample_only", "baseline_wide", "resize_conv"),
            same_as={"transposed_bias0": "transposed", "baseline_wide_bias0": "baseline_wide"},
        ),
        Protocol(
            "digits-centered",
            "MNIST digits (8,000/2,000 split of t10k), the tutorial's protocol, pixels centred",
            (*MNIST_DIGITS, "data.scaling=centered", *TUTORIAL, SEEDS),
            variants=DIGITS_VARIANTS,
            extra_variants=DIGITS_RESCUES,
            references=RESCUE_REFERENCES,
            setup=DIGITS_SETUP,
        ),
        Protocol(
            "digits-unit",
            "MNIST digits (8,000/2,000 split of t10k), the tutorial's protocol, pixels in [0, 1]",
            (*MNIST_DIGITS, "data.scaling=unit", *TUTORIAL, SEEDS),
            variants=DIGITS_VARIANTS,
            extra_variants=DIGITS_RESCUES,
            references=RESCUE_REFERENCES,
            setup=DIGITS_SETUP,
        ),
    )
}


def hydra_value(value: Any) -> str:
    """A Python value in the override grammar of `dvc exp run -S` (Hydra's): dicts, lists, numbers,
    booleans, null, and strings quoted unless they are plain words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {hydra_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(hydra_value(item) for item in value) + "]"
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) and text.lower() not in ("null", "true", "false", "nan", "inf"):
        return text
    # a backslash escapes only a quote (or the closing quote): double the runs before one, then escape quotes
    text = re.sub(r"(\\+)(?='|$)", lambda run: run.group(1) * 2, text)
    return "'" + text.replace("'", "\\'") + "'"


def derived_variant(params: Params, base: str, changes: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """params.yaml's variant `base` with `changes` ({layer number from 1: {key: value}}) applied, as the
    dict a `+variants.NAME=` setting carries. The result is validated as a Variant."""
    from pipeline.config import Variant

    spec = params.variant(base)
    layers = [layer.model_dump(exclude_defaults=True) for layer in spec.layers]
    for number, keys in changes.items():
        if not 1 <= number <= len(layers):
            raise ValueError(f"variant {base!r} has {len(layers)} layers, no layer {number}")
        layers[number - 1] |= dict(keys)
    shown = "; ".join(f"layer {n}: {', '.join(f'{k} {v}' for k, v in keys.items())}" for n, keys in changes.items())
    derived = {"description": f"{base} with {shown}", "layers": layers}
    Variant.model_validate(derived)  # a bad change fails here, not in the middle of a run
    return derived


def experiment_settings(protocol: Protocol, params: Params) -> list[str]:
    """The protocol's `-S` values for params.yaml as it is: its settings, then the variants it removes
    and the ones it adds."""
    names = list(params.variants)
    keep = names if protocol.variants is None else [v for v in protocol.variants if v not in protocol.extra_variants]
    unknown = [name for name in [*keep, *protocol.leave_out] if name not in names]
    if unknown:
        raise DataError(f"protocol {protocol.name}: no variant {', '.join(unknown)} in params.yaml")
    removed = [name for name in names if name not in keep or name in protocol.leave_out]
    added = [
        f"+variants.{name}={hydra_value(derived_variant(params, base, changes))}"
        for name, (base, changes) in protocol.extra_variants.items()
    ]
    return [*protocol.settings, *(f"~variants.{name}" for name in removed), *added]


def experiment_command(protocol: Protocol, params: Params) -> list[str]:
    """`dvc exp run -n NAME -S ...` for the protocol: the same runs as a named DVC experiment in the
    workspace, one stage per variant: what made the CSVs that record no `threads`."""
    command = ["dvc", "exp", "run", "-n", protocol.name]
    for setting in experiment_settings(protocol, params):
        command += ["-S", setting]
    return command


GRIDS = Path("grids")  # each protocol's grid folder: grids/<protocol>/ (runs.csv, per-run files)
# a protocol's grid runs one single-thread run per core: more runs at once beat more threads per run
GRID_SETTINGS = ("++train.threads=1",)  # ++: set, or add to a params.yaml without the key


def grid_command(protocol: Protocol, params: Params) -> list[str]:
    """`python -m pipeline grid --out grids/NAME --set ...` for the protocol: every variant x seed
    of its params, on every core here (or on the cluster in RAY_ADDRESS)."""
    command = ["python", "-m", "pipeline", "grid", "--out", str(GRIDS / protocol.name)]
    for setting in [*experiment_settings(protocol, params), *GRID_SETTINGS]:
        command += ["--set", setting]
    return command


def shell_line(command: Sequence[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)


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
        for c in reporting.RUN_COLUMNS
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
    table["trained"] = table["trained"].astype(bool)
    return table[RESULT_COLUMNS]


# --- tables ----------------------------------------------------------------------------------------


def _runs(results: pd.DataFrame) -> pd.DataFrame:
    records = [
        {key: (None if _missing(v) or v is pd.NA else v) for key, v in record.items()}
        for record in results.to_dict("records")
    ]
    return reporting.runs_table(records, variant_order=list(dict.fromkeys(results["variant"])))


def comparison_table(results: pd.DataFrame, reference: str) -> str:
    """The summary table against `reference`, the kind reports/summary.md has (Wilson intervals on the
    trained share, Fisher's exact p, bootstrap intervals, Holm-adjusted sign-flip p, if both trained)."""
    if reference not in set(results["variant"]):
        raise DataError(f"no variant {reference!r} in these results")
    summary = reporting.summarize(_runs(results), NUM_CLASSES, baseline=reference)
    return reporting.summary_table_markdown(summary)


def dead_runs(results: pd.DataFrame) -> str:
    """The runs that did not train, one bullet each (reporting's list)."""
    records = [
        {key: (None if _missing(v) or v is pd.NA else v) for key, v in record.items()}
        for record in results.to_dict("records")
    ]
    text = reporting._collapsed_list(records, NUM_CLASSES).strip()
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


def rescue_table(results: pd.DataFrame, suffix: str = "_bias0") -> pd.DataFrame:
    """Per variant that has a `<variant><suffix>` twin in these results (the same network, biases at 0
    where the tutorial's are 1.0): runs that trained with each, Fisher's exact p on the two counts, the
    median step-0 loss of each; then all of them pooled. Empty when no variant has a twin."""
    from scipy.stats import fisher_exact

    names = set(results["variant"])
    pairs = [(v, v + suffix) for v in dict.fromkeys(results["variant"]) if v + suffix in names]
    if not pairs:
        return pd.DataFrame()
    rows = []
    for label, before, after in [
        *((v, [v], [w]) for v, w in pairs),
        ("all of them", [v for v, _ in pairs], [w for _, w in pairs]),
    ]:
        one, zero = results[results["variant"].isin(before)], results[results["variant"].isin(after)]
        k1, k0 = int(one["trained"].sum()), int(zero["trained"].sum())
        p = fisher_exact([[k1, len(one) - k1], [k0, len(zero) - k0]]).pvalue
        rows.append(
            {
                "variant": label,
                "trained, tutorial's biases": f"{k1}/{len(one)}",
                f"trained, {suffix.strip('_')}": f"{k0}/{len(zero)}",
                "Fisher p": f"{p:.2g}",
                "step-0 loss, tutorial's biases: median": f"{one['step0_loss'].median():.3g}",
                f"step-0 loss, {suffix.strip('_')}: median": f"{zero['step0_loss'].median():.3g}",
            }
        )
    return pd.DataFrame(rows)


def agreement_table(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Per variant, the trained share (Wilson 95%) and mean test accuracy (bootstrap 95%) of two
    per-run tables of one protocol side by side, and whether each of `after`'s values lies inside
    `before`'s interval (a regeneration's check: the same protocol, other threads or machine)."""
    old = reporting.summarize(_runs(before), NUM_CLASSES).set_index("variant")
    new = reporting.summarize(_runs(after), NUM_CLASSES).set_index("variant")
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


def _summary_cell(row: pd.Series, reference: str) -> str:
    share = f"{int(row['trained_runs'])}/{int(row['n_seeds'])}"
    if row["verdict"] == "reference":
        return f"{share}, {row['test_accuracy_mean'] * 100:.2f}%"
    fisher = (
        ""
        if _missing(row["trained_p_fisher"]) or row["trained_p_fisher"] >= 1
        else f" (p={row['trained_p_fisher']:.2g})"
    )
    parts = [f"{share}{fisher}"]
    if not _missing(row["diff_vs_baseline_mean"]):
        all_runs = reporting._diff_cell(row["diff_vs_baseline_mean"], row["diff_ci_low"], row["diff_ci_high"], "")
        parts.append(f"**{all_runs}**" if row["significant"] else all_runs)
    if not _missing(row["trained_diff_mean"]) and row["trained_pairs"] != row["n_paired_seeds"]:
        both = reporting._diff_cell(
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
        summary = reporting.summarize(_runs(table), NUM_CLASSES, baseline=reference).set_index("variant")
        row = {"protocol": f"`{name}`", f"`{reference}`": _summary_cell(summary.loc[reference], reference)}
        for variant in present:
            shown = variant if variant in summary.index else same_as(name).get(variant)
            row[f"`{variant}`"] = (
                "not run"
                if shown not in summary.index
                else ("" if shown == variant else f"= `{shown}`: ") + _summary_cell(summary.loc[shown], reference)
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
    if part == "rescue":
        table = rescue_table(results)
        return _markdown(table) if not table.empty else "No variant here has a `_bias0` twin."
    if part and part.startswith("vs-"):
        return comparison_table(results, part[3:])
    if part is None:
        references = [r for r in protocol.references if r in set(results["variant"])]
        blocks = [protocol_block(protocol, results, "command", command)]
        blocks.append(protocol_block(protocol, results, f"vs-{references[0]}", command))
        blocks.append(protocol_block(protocol, results, "dead-runs", command))
        blocks.append(protocol_block(protocol, results, "step0", command))
        blocks.append(protocol_block(protocol, results, "rescue", command))
        blocks += [protocol_block(protocol, results, f"vs-{r}", command) for r in references[1:]]
        return "\n\n".join(blocks)
    raise DataError(
        f"results:{protocol.name}:{part}: unknown table; known: command, vs-VARIANT, dead-runs, step0, rescue, stopping"
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
    CSV whose runs record no `threads` (made before the grid, with TensorFlow's default threads),
    the `dvc exp run` and `collect` that made it."""
    lines = [shell_line(protocol.setup)] if protocol.setup else []
    if results is not None and results["threads"].isna().all():
        lines.append(shell_line(experiment_command(protocol, params)))
        lines.append(f"python -m pipeline.results collect {protocol.name}")
    else:
        lines.append(shell_line(grid_command(protocol, params)))
        lines.append(f"cp {GRIDS / protocol.name / 'runs.csv'} {RESULTS_DIR / protocol.name}.csv")
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
