"""`python -m pipeline grid`: every variant x seed of a grid as a task, on every core here or on a
Ray cluster; each run is the train stage's (trained, tested, its files under --out, one MLflow run).

    python -m pipeline grid --variants baseline,transposed --seeds 1-30 --out grids/my-grid
    python -m pipeline grid --seeds 1-10 --set train.steps=2000 --set data.scaling=unit --out grids/unit
    RAY_ADDRESS=HEAD:6379 python -m pipeline grid ... --out grids/on-the-cluster   # docs/scale.md

Run the same command again to resume: finished runs are not run again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.runtime.stage import run_stage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The stage's arguments; run_stage parses them first, so `--help` and a usage error answer at once."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline grid", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", help="comma-separated variant names (default: every variant of params.yaml)")
    parser.add_argument("--seeds", help="seeds: 1-30, 1,2,5-7 (default: train.seeds of params.yaml)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a params.yaml value, as `dvc exp run -S`"
    )
    parser.add_argument("--workers", type=int, help="local workers (default: one per core / train.threads)")
    parser.add_argument("--address", help="an existing Ray cluster's HOST:PORT (default: RAY_ADDRESS, else local)")
    parser.add_argument("--out", type=Path, required=True, help="the grid's folder: runs.csv and per-run files")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--no-progress", action="store_true", help="no live progress line")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def main(args: argparse.Namespace) -> None:
    from pipeline.grid.driver import run_grid, tables
    from pipeline.grid.spec import apply_settings, parse_seeds, select_variants

    params = apply_settings(args.params, args.set)
    variants = select_variants(params, args.variants, str(args.params))
    seeds = parse_seeds(args.seeds) if args.seeds else list(params.train.seeds)
    try:
        table = run_grid(
            params, variants, seeds, args.out, workers=args.workers, address=args.address, progress=not args.no_progress
        )
    except KeyboardInterrupt:  # before any run started (while fetching or preparing): nothing to keep
        print("interrupted before the grid's runs started; run the same command again", file=sys.stderr)
        raise SystemExit(130) from None
    sys.stdout.write(tables(table, variants))


if __name__ == "__main__":
    run_stage(main, parse_args, tensorflow=False)
