"""DVC stage `prepare`: split and scale the raw IDX files into <out>/<dataset>.npz."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from pipeline.config import load_params
from pipeline.datasets import IDX_FILES, class_names, file_sha256, load_raw, resolve_dataset
from pipeline.preparation import prepare_arrays
from pipeline.stages import run_stage


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.stages.prepare", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--raw", default="data/raw", type=Path, help="raw data root (default: data/raw)")
    parser.add_argument("--out", default="data/prepared", type=Path, help="output dir (default: data/prepared)")
    args = parser.parse_args(argv)

    data = load_params(args.params).data
    dataset = resolve_dataset(data.dataset, data.sha256)
    raw_dir = args.raw / dataset.name
    raw = load_raw(raw_dir, dataset)
    arrays = prepare_arrays(*raw, validation_size=data.validation_size, seed=data.split_seed)
    arrays["classes"] = np.array(class_names(dataset, raw[1], raw[3]), dtype=str)
    arrays["source_sha256"] = np.array([file_sha256(raw_dir / n) for n in IDX_FILES.values()], dtype=str)
    arrays["dataset"] = np.array(dataset.name, dtype=str)

    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{dataset.name}.npz"
    tmp = args.out / f".{out.name}.{os.getpid()}.tmp"  # same directory, so os.replace is atomic
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # uncompressed: every train/evaluate stage loads it, in ~0.1 s
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    counts = ", ".join(f"{split} {len(arrays['y_' + split])}" for split in ("train", "valid", "test"))
    size = "x".join(map(str, arrays["x_test"].shape[1:3]))
    print(f"prepared {dataset.name}: {counts} images of {size} -> {out}")


if __name__ == "__main__":
    run_stage(main, tensorflow=False)
