"""DVC stage `fetch`: download the dataset's four IDX files, checksum-verified, into <out>/<dataset>/."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.data_config import load_data_config
from pipeline.datasets import resolve_dataset
from pipeline.download import fetch_dataset
from pipeline.runtime.stage import run_stage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The stage's arguments; run_stage parses them first, so `--help` and a usage error answer at once."""
    parser = argparse.ArgumentParser(prog="python -m pipeline fetch", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--out", default="data/raw", type=Path, help="raw data root (default: data/raw)")
    parser.add_argument("--no-progress", action="store_true", help="no download progress bars")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    data = load_data_config(args.params)  # the data section only: the variants are the train stage's to check
    dataset = resolve_dataset(data.dataset, data.sha256)
    dest = args.out / dataset.name
    paths = fetch_dataset(dataset, data.mirrors, dest, timeout=data.timeout_seconds, progress=not args.no_progress)
    total = sum(p.stat().st_size for p in paths.values())
    print(f"fetched {dataset.name}: {len(paths)} files verified in {dest} ({total} bytes)")


if __name__ == "__main__":
    run_stage(main, parse_args, tensorflow=False)
