"""The on-disk layout of the pipeline's files: one function per kind of file.

dvc.yaml spells the same layout with ${...} templates; tests/unit/test_dvc_yaml.py renders it and
checks it against these functions, so the stages and DVC can never disagree on where a file is.
Every function takes the folder it lives under (the stage's --flag), relative to the project root.
"""

from __future__ import annotations

from pathlib import Path

RAW = Path("data/raw")
PREPARED = Path("data/prepared")
MODELS = Path("models")
METRICS = Path("metrics")
PLOTS = Path("plots")
REPORTS = Path("reports")


def run_name(variant: str, seed: int) -> str:
    """A run's one name: the MLflow run name, the report's label and its place under models/."""
    return f"{variant}/seed-{seed}"


def raw_dir(dataset: str, root: Path = RAW) -> Path:
    """The four IDX .gz files of a dataset."""
    return Path(root) / dataset


def prepared_dir(dataset: str, root: Path = PREPARED) -> Path:
    """The prepared splits of a dataset (pipeline.prepared's format)."""
    return Path(root) / dataset


def model_dir(variant: str, seed: int, root: Path = MODELS) -> Path:
    """A train stage's outputs: model.keras, history.csv, validation.csv, spec.json, run.json."""
    return Path(root) / run_name(variant, seed)


def metrics_file(variant: str, seed: int, root: Path = METRICS) -> Path:
    """An evaluate stage's test metrics."""
    return Path(root) / f"{run_name(variant, seed)}.json"


def plots_dir(variant: str, seed: int, root: Path = PLOTS) -> Path:
    """An evaluate stage's confusion matrix, as dvc-plots CSV and as PNG."""
    return Path(root) / run_name(variant, seed)
