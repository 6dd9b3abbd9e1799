"""The files stages hand to each other: output folders written atomically, JSON, a trained run's
files, an evaluated run's files. (The prepared data has its own module: pipeline.prepared.)"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import DataError

if TYPE_CHECKING:
    from pipeline.record import MetricsRecord, RunRecord


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch folder that replaces `final` only if the block completes.

    An interrupted or failed stage leaves no half-written output that DVC could mistake for a result.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.partial-*"):  # left by a killed (kill -9) earlier run
        shutil.rmtree(stale, ignore_errors=True)
    scratch = final.parent / f".{final.name}.partial-{os.getpid()}"
    scratch.mkdir()
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(scratch, final)


def json_safe(data: Any) -> Any:
    """NaN/inf are not JSON: null instead (DVC shows '-')."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [json_safe(v) for v in data]
    return data


def write_atomic(path: Path, content: bytes) -> None:
    """Write a file atomically (temp file + rename): it appears whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename); NaN becomes null."""
    write_atomic(path, (json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the stage that writes it first (dvc repro)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}): rerun the stage that writes it") from None


def write_trained(directory: Path, model: Any, result: Any, *, spec: dict, run: RunRecord) -> None:
    """A train stage's outputs, all or nothing: model.keras, history.csv (every step),
    validation.csv, spec.json (the resolved variant) and run.json (timings, counts, run id)."""
    import pandas as pd

    with atomic_dir(directory) as out:
        model.save(out / "model.keras")
        pd.DataFrame({"step": result.steps, "loss": result.loss, "accuracy": result.accuracy}).to_csv(
            out / "history.csv", index=False
        )
        pd.DataFrame(
            {"step": result.val_steps, "val_loss": result.val_loss, "val_accuracy": result.val_accuracy}
        ).to_csv(out / "validation.csv", index=False)
        write_json(out / "spec.json", spec)
        write_json(out / "run.json", run.to_json())


def write_evaluation(plots: Path, metrics_file: Path, record: MetricsRecord, pairs: Any, figure: Any) -> None:
    """An evaluate stage's outputs: plots/.../confusion.csv and confusion.png (all or nothing), then
    the metrics JSON (atomic)."""
    with atomic_dir(plots) as out:
        pairs.to_csv(out / "confusion.csv", index=False)
        figure.savefig(out / "confusion.png", dpi=100, bbox_inches="tight")
    write_json(metrics_file, record.to_json())


@dataclass(frozen=True)
class RunOutputs:
    """What the train and evaluate stages left for one variant x seed: run.json merged with the
    metrics JSON, the per-step history, the validations and the (actual, predicted) pairs."""

    record: dict
    history: Any
    validation: Any
    confusion_pairs: Any


def read_run_outputs(variant: str, seed: int, models: Path, metrics: Path, plots: Path) -> RunOutputs:
    import pandas as pd

    from pipeline import paths

    model_dir = paths.model_dir(variant, seed, models)
    try:
        return RunOutputs(
            record={**read_json(model_dir / "run.json"), **read_json(paths.metrics_file(variant, seed, metrics))},
            history=pd.read_csv(model_dir / "history.csv"),
            validation=pd.read_csv(model_dir / "validation.csv"),
            confusion_pairs=pd.read_csv(paths.plots_dir(variant, seed, plots) / "confusion.csv"),
        )
    except FileNotFoundError as exc:
        raise DataError(f"{exc.filename} not found: run the stages before compare (dvc repro)") from None


def load_model(model_dir: Path) -> Any:
    """A trained run's Keras model (models/<variant>/seed-<n>/model.keras)."""
    import keras

    return keras.saving.load_model(Path(model_dir) / "model.keras")


def write_report(out: Path, report: Any) -> None:
    """The compare stage's outputs under reports/: the tables, the Markdown summary, summary.json
    (the DVC metrics), the learning-curve CSVs for `dvc plots` and the figures."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    report.runs.to_csv(out / "comparison.csv", index=False)
    report.summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(report.markdown)
    write_json(out / "summary.json", report.metrics)
    (out / "curves").mkdir(exist_ok=True)
    for column, table in report.curves.items():
        table.to_csv(out / "curves" / f"{column}.csv", index=False)
    for name, figure in report.figures.items():
        figure.savefig(out / "figures" / name, dpi=100, bbox_inches="tight")
