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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline import result_tables as tables
from pipeline import statistics, summary_numbers
from pipeline.errors import DataError
from pipeline.protocols import (
    GRID_SETTINGS,
    GRIDS,
    PROTOCOLS,
    SCALING,
    Protocol,
    experiment_command,
    experiment_settings,
    grid_command,
    more_seeds_command,
    more_seeds_out,
    setting,
    shell_line,
)

if TYPE_CHECKING:
    from pipeline.artifacts import RunOutputs
    from pipeline.config import Params

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
        classes = len(record.get("per_class_accuracy") or {}) or tables.NUM_CLASSES
        if classes != tables.NUM_CLASSES:
            raise DataError(
                f"{record['variant']}/seed-{record['seed']}: {classes} classes, the tables assume {tables.NUM_CLASSES}"
            )
        history = output.history
        step0 = float(history["loss"].iloc[0]) if len(history) else math.nan
        row = {key: record.get(key) for key in RESULT_COLUMNS}
        row["trained"] = bool(statistics.trained([record["test_accuracy"]], tables.NUM_CLASSES)[0])
        row["step0_loss"] = step0
        rows.append(row)
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    for column in _NULLABLE_INT:
        table[column] = pd.array([None if tables.missing(v) else int(v) for v in table[column]], dtype="Int64")
    return table


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
    table["trained"] = statistics.trained(table["test_accuracy"], tables.NUM_CLASSES)
    return table[RESULT_COLUMNS]


def add_runs(table: pd.DataFrame, more: pd.DataFrame) -> pd.DataFrame:
    """`table` with the runs of `more` (a grid's runs.csv) after it; a variant x seed in both is refused."""
    both = table.merge(more, on=["variant", "seed"])[["variant", "seed"]]
    if len(both):
        shown = ", ".join(f"{v}/seed-{s}" for v, s in both.itertuples(index=False))
        raise DataError(f"runs already in the CSV: {shown}")
    return pd.concat([table, more[RESULT_COLUMNS]], ignore_index=True)


# --- tables ----------------------------------------------------------------------------------------


def protocol_block(protocol: Protocol, results: pd.DataFrame, part: str | None, command: str) -> str:
    """The Markdown of one marker block of a protocol (see the module's docstring)."""
    if part == "command":
        return f"```bash\n{command}\n```"
    if part == "dead-runs":
        return tables.dead_runs(results)
    if part == "step0":
        return tables.markdown(tables.step0_table(results))
    if part == "stopping":
        every, steps = setting(protocol, "train.validation_every"), setting(protocol, "train.steps")
        if every is None or steps is None:
            raise DataError(f"results:{protocol.name}:stopping: the protocol sets no train.validation_every/steps")
        return tables.markdown(tables.stopping_table(results, int(every), int(steps)))
    if part == "family":
        return (
            tables.markdown(tables.family_table(protocol, results))
            if protocol.family
            else "This protocol states no family."
        )
    if part == "rescue":
        table = tables.rescue_table(results)
        return tables.markdown(table) if not table.empty else "No variant here has a `_bias0` twin."
    if part and part.startswith("vs-"):
        return tables.comparison_table(results, part[3:])
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
    (unless `results` has none of them yet), the grid of its added_seeds and the `add` of its runs."""
    lines = [shell_line(protocol.setup)] if protocol.setup else []
    first = None if results is None else results[~results["seed"].isin(protocol.added_seeds)]
    if first is not None and first["threads"].isna().all():
        lines.append(shell_line(experiment_command(protocol, params)))
        lines.append(f"python -m pipeline.results collect {protocol.name}")
    else:
        lines.append(shell_line(grid_command(protocol, params)))
        lines.append(f"cp {GRIDS / protocol.name / 'runs.csv'} {RESULTS_DIR / protocol.name}.csv")
    if protocol.more_seeds and (results is None or results["seed"].isin(protocol.added_seeds).any()):
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
            return tables.families_text()
        if name.startswith("scaling:"):
            dataset = name.partition(":")[2]
            if dataset not in SCALING:
                raise DataError(f"results:{name}: no dataset {dataset!r}; known: {', '.join(SCALING)}")
            centred, unit = (results_of(p) for p in SCALING[dataset][1:])
            return None if centred is None or unit is None else tables.markdown(tables.scaling_table(centred, unit))
        if name == "summary":
            available = {p: results_of(p) for p in PROTOCOLS}
            available = {p: r for p, r in available.items() if r is not None}
            return tables.summary_table(available) if available else None
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
        more = run_grid(grid_params, list(protocol.more_seeds), list(protocol.added_seeds), more_seeds_out(protocol))
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
        print(tables.markdown(tables.agreement_table(read_results(args.before), read_results(args.after))))
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
