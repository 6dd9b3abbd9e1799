"""Test helpers for the e2e tests: a git + DVC repo holding this project's pipeline on a small learnable
dataset, `dvc` with a timeout, what DVC and the project's MLflow store hold, and a copy of a built
project that owns all its files (tests/e2e/conftest.py builds one project per session; a test that
changes it works on its own copy, so that no test depends on another or on their order)."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import support
import yaml
from model_store import learnable_images
from support import ROOT, clean_env, commit_all, dvc_init, git_init, write_idx_mirror

SEEDS = [1, 2]
VARIANTS = ["baseline", "transposed"]
N_TEST = 300


def tiny_dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The repo's dataset: 700 training and N_TEST test images of `learnable_images`, always the same."""
    rng = np.random.default_rng(0)
    x_train, y_train = learnable_images(700, rng)
    x_test, y_test = learnable_images(N_TEST, rng)
    return x_train, y_train, x_test, y_test


def make_repo(path: Path, seeds: list[int] = SEEDS) -> dict:
    """A git + DVC repo holding this project's pipeline, with params for a tiny local IDX dataset and
    train.seeds `seeds`."""
    path.mkdir()
    for item in ("dvc.yaml", "pipeline", ".gitignore"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, path / item)
    for cache in path.joinpath("pipeline").rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    raw = path.parent / "mirror"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(
        dataset="tiny", mirrors=[str(raw)], sha256=write_idx_mirror(raw, tiny_dataset()), validation_size=100
    )
    # Keras' initializer: every seed of both variants reaches test accuracy 1.0 within the 41 steps on
    # this data (with the tutorial's, transposed/seed-2 is still at chance then)
    params["train"].update(steps=41, validation_every=20, seeds=seeds, batch_size=16, initializer="keras")
    params["evaluate"]["batch_size"] = 37  # not the training batch size, not a divisor of 300
    params["variants"] = {name: params["variants"][name] for name in VARIANTS}
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git_init(path)
    dvc_init(path)
    commit_all(path)
    return params


def copy_project(source: Path, dest: Path) -> Path:
    """A copy at `dest` of the project at `source` that shares nothing with it: git, DVC's cache and
    records, the outputs, and the MLflow store, whose every record of a path in `source` (where the
    artifacts of each experiment, run and model live) now names the same path in `dest`. Nothing
    may run in `source` meanwhile."""
    shutil.copytree(source, dest, symlinks=True)
    old, new = f"{source}/", f"{dest}/"
    with contextlib.closing(sqlite3.connect(dest / "mlflow.db")) as connection, connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        columns = [(t, row[1]) for t in tables for row in connection.execute(f'PRAGMA table_info("{t}")')]
        for table, column in columns:
            connection.execute(
                f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?)'
                f' WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0',
                [old, new, old],
            )
        left = [
            f"{table}.{column}"
            for table, column in columns
            if connection.execute(
                f'SELECT count(*) FROM "{table}" WHERE instr(CAST("{column}" AS BLOB), CAST(? AS BLOB)) > 0', [old]
            ).fetchone()[0]
        ]
    assert not left, f"the copy's MLflow store still names {source} in {left}"
    return dest


def head(repo: Path) -> str:
    """The repo's current commit, as the stages tag their runs with it."""
    return support.run(["git", "rev-parse", "HEAD"], cwd=repo, env=clean_env(), check=True, timeout=60).stdout.strip()


def dvc(repo: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    result = support.run(["dvc", *args], cwd=repo, env=clean_env(**extra_env), timeout=900)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def changed_stages(repo: Path) -> set[str]:
    return set(json.loads(dvc(repo, "status", "--json").stdout))


def mlflow_runs(repo: Path, experiment_name: str = "deconvolution"):
    """An experiment of the project's store and its runs (the training runs by default; the compare
    stage's summaries are in "deconvolution-reports")."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"no MLflow experiment {experiment_name} in the project's store"
    return experiment, mlflow.search_runs([experiment.experiment_id], output_format="list")


def metrics_files(repo: Path, seeds: list[int] = SEEDS) -> dict[str, Path]:
    """Each run's metrics JSON, by run name, in the folders dvc.yaml's train stages own."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    out = {}
    for variant in VARIANTS:
        folder = next(o["path"] for o in lock[f"train@{variant}"]["outs"] if o["path"].startswith("metrics/"))
        for seed in seeds:
            out[f"{variant}/seed-{seed}"] = repo / folder / f"seed-{seed}.json"
    return out


def baseline_units(units: int) -> str:
    """A `dvc exp run -S` override: the baseline variant of make_repo's params.yaml with `units` units
    in its hidden dense layer (64), which reruns only train@baseline and compare."""
    layers = yaml.safe_load((ROOT / "params.yaml").read_text())["variants"]["baseline"]["layers"]
    assert layers[3] == {"type": "dense", "units": 64}, layers
    layers[3]["units"] = units
    return "variants.baseline.layers=" + yaml.safe_dump(layers, default_flow_style=True, width=10**6).strip()


def run_queued_grid(repo: Path, prefix: str, **extra_env: str) -> str:
    """Commit the project as it stands (dvc.lock too, as a user commits a run before trying
    experiments on it: an experiment starts from the commit), queue two experiments, <prefix>-41 and
    <prefix>-43 (`baseline_units` 41 and 43), run them with two workers, wait; the queue's status."""
    commit_all(repo, "the pipeline's run")
    for units in (41, 43):
        dvc(repo, "exp", "run", "--queue", "--name", f"{prefix}-{units}", "-S", baseline_units(units))
    dvc(repo, "queue", "start", "-j", "2", **extra_env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = dvc(repo, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    return status
