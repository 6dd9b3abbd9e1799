"""The grid's data: the fetch and prepare stages' own code, run for what is missing. Raw files are
shared with `dvc repro` (data/raw/<dataset>, kept where they verify); prepared splits are kept per
data setting under data/grid/, since a grid's `--set data....` may differ from params.yaml's."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from pipeline import paths, prepared
from pipeline.data_config import DataConfig
from pipeline.datasets import IDX_FILES, file_sha256, resolve_dataset
from pipeline.download import fetch_dataset
from pipeline.idx import load_raw
from pipeline.preparation import prepare

GRID_DATA = Path("data/grid")


def prepared_key(config: DataConfig, source_sha256: tuple[str, ...]) -> str:
    """What prepared splits depend on: the raw files and the split and scaling settings."""
    definition = {
        "dataset": config.dataset,
        "source_sha256": list(source_sha256),
        "validation_size": config.validation_size,
        "split_seed": config.split_seed,
        "scaling": config.scaling,
    }
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:12]


def ensure_prepared(config: DataConfig, raw_root: Path = paths.RAW, root: Path = GRID_DATA) -> prepared.Prepared:
    """The prepared splits for `config`: fetched (files in place that verify are kept) and prepared
    only where missing, then loaded (loaded arrays, not memory maps: they travel to the workers)."""
    dataset = resolve_dataset(config.dataset, config.sha256)
    raw_dir = paths.raw_dir(dataset.name, raw_root)
    fetch_dataset(dataset, config.mirrors, raw_dir, timeout=config.timeout_seconds, progress=sys.stderr.isatty())
    source = tuple(file_sha256(raw_dir / name) for name in IDX_FILES.values())
    out = Path(root) / f"{dataset.name}-{prepared_key(config, source)}"
    if not (out / prepared.META).is_file():
        print(f"preparing {dataset.name} ({config.scaling} pixels) -> {out}", file=sys.stderr)
        prepared.save(out, prepare(dataset, load_raw(raw_dir, dataset), source, config))
    return prepared.in_memory(prepared.load(out))
