"""DVC stage `prepare`: split and scale the raw IDX files into <out>/<dataset>/ (pipeline.prepared)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import paths, prepared
from pipeline.data_config import load_data_config
from pipeline.datasets import IDX_FILES, file_sha256, resolve_dataset
from pipeline.idx import load_raw
from pipeline.preparation import prepare
from pipeline.runtime.stage import run_stage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The stage's arguments; run_stage parses them first, so `--help` and a usage error answer at once."""
    parser = argparse.ArgumentParser(prog="python -m pipeline prepare", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--raw", default=paths.RAW, type=Path, help=f"raw data root (default: {paths.RAW})")
    parser.add_argument("--out", default=paths.PREPARED, type=Path, help=f"output root (default: {paths.PREPARED})")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    config = load_data_config(args.params)
    dataset = resolve_dataset(config.dataset, config.sha256)
    raw_dir = paths.raw_dir(dataset.name, args.raw)
    raw = load_raw(raw_dir, dataset)  # names a missing or corrupt file
    data = prepare(dataset, raw, tuple(file_sha256(raw_dir / name) for name in IDX_FILES.values()), config)
    out = paths.prepared_dir(dataset.name, args.out)
    prepared.save(out, data)
    counts = ", ".join(f"{split} {len(getattr(data, 'y_' + split))}" for split in ("train", "valid", "test"))
    size = "x".join(map(str, data.input_shape[:2]))
    print(f"prepared {dataset.name}: {counts} images of {size} -> {out}")


if __name__ == "__main__":
    run_stage(main, parse_args, tensorflow=False)
