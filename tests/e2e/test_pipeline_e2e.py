"""End to end: `dvc repro` in a temporary git repo on a small generated dataset, then MLflow read back."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import support
import yaml
from support import ROOT, Lines, clean_env, commit_all, dvc_init, git_init, kill_group

from pipeline.datasets import IDX_FILES, file_sha256, write_idx

pytestmark = pytest.mark.slow


SEEDS = [1, 2]
VARIANTS = ["baseline", "transposed"]
N_TEST = 300


def learnable_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Digits stand-in: class k is a bright bar at rows 2k..2k+3 plus noise, so a CNN learns it fast."""
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        images[i, 2 * k + 2 : 2 * k + 6, 4:24] = 230
    return images, labels


def tiny_dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The repo's dataset: 700 training and N_TEST test images of `learnable_images`, always the same."""
    rng = np.random.default_rng(0)
    x_train, y_train = learnable_images(700, rng)
    x_test, y_test = learnable_images(N_TEST, rng)
    return x_train, y_train, x_test, y_test


def make_repo(path: Path) -> dict:
    """A git + DVC repo holding this project's pipeline, with params for a tiny local IDX dataset."""
    path.mkdir()
    for item in ("dvc.yaml", "pipeline", ".gitignore"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, path / item)
    for cache in path.joinpath("pipeline").rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    raw = path.parent / "mirror"
    raw.mkdir()
    for key, array in zip(IDX_FILES, tiny_dataset(), strict=True):
        write_idx(raw / IDX_FILES[key], array)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(
        dataset="tiny",
        mirrors=[str(raw)],
        sha256={name: file_sha256(raw / name) for name in IDX_FILES.values()},
        validation_size=100,
    )
    # Keras' initializer: every seed of both variants reaches test accuracy 1.0 within the 41 steps on
    # this data (with the tutorial's, transposed/seed-2 is still at chance then)
    params["train"].update(steps=41, validation_every=20, seeds=SEEDS, batch_size=16, initializer="keras")
    params["evaluate"]["batch_size"] = 37  # not the training batch size, not a divisor of 300
    params["variants"] = {name: params["variants"][name] for name in VARIANTS}
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git_init(path)
    dvc_init(path)
    commit_all(path)
    return params


def head(repo: Path) -> str:
    """The repo's current commit, as the stages tag their runs with it."""
    return support.run(["git", "rev-parse", "HEAD"], cwd=repo, env=clean_env(), check=True, timeout=60).stdout.strip()


def dvc(repo: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    result = support.run(["dvc", *args], cwd=repo, env=clean_env(**extra_env), timeout=900)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def changed_stages(repo: Path) -> set[str]:
    return set(json.loads(dvc(repo, "status", "--json").stdout))


def mlflow_runs(repo: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("deconvolution")
    assert experiment is not None, "no MLflow experiment in the project's store"
    return experiment, mlflow.search_runs([experiment.experiment_id], output_format="list")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("e2e") / "project"
    make_repo(path)
    dvc(path, "repro")
    return path


def test_every_variant_and_seed_has_a_finished_run_with_params_metrics_and_model(repo: Path):
    import mlflow

    experiment, runs = mlflow_runs(repo)
    training = {r.info.run_name: r for r in runs if r.data.tags.get("summary") != "true"}
    assert set(training) == {f"{v}/seed-{s}" for v in VARIANTS for s in SEEDS}
    for name, run in training.items():
        variant, seed = name.split("/seed-")
        assert run.info.status == "FINISHED"
        assert run.data.params["variant"] == variant
        assert run.data.params["seed"] == seed
        assert run.data.params["train.batch_size"] == "16"
        assert run.data.params["train.steps"] == "41"
        assert run.data.tags["evaluate.batch_size"] == "37"
        assert run.data.params["data.dataset"] == "tiny"
        assert run.data.tags["dvc.stage"] == f"train@{variant}-{seed}"
        assert run.data.tags["git.commit"] == run.data.tags["mlflow.source.git.commit"] == head(repo)
        # per-step history logged with steps
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in history] == list(range(41))
        val = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in val] == [0, 20, 40]
        models = mlflow.search_logged_models(
            experiment_ids=[experiment.experiment_id],
            filter_string=f"source_run_id = '{run.info.run_id}'",
            output_format="list",
        )
        assert len(models) == 1
        info = mlflow.models.get_model_info(f"models:/{models[0].model_id}")
        assert info.signature is not None
        assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 28, 28, 1)
        # the store's artifacts live beside it in the project, not in the stage's working folder
        assert models[0].artifact_location.startswith((repo / "mlartifacts").as_uri())


def metrics_files(repo: Path) -> dict[str, Path]:
    """Each run's metrics JSON, by run name, where dvc.yaml's evaluate stages write them."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    out = {}
    for name, stage in lock.items():
        if name.startswith("evaluate@"):
            variant, seed = name.removeprefix("evaluate@").rsplit("-", 1)
            (path,) = [o["path"] for o in stage["outs"] if o["path"].endswith(".json")]
            out[f"{variant}/seed-{seed}"] = repo / path
    return out


def test_every_run_learns_and_mlflow_holds_the_metrics_files_values(repo: Path):
    import mlflow

    *_, y_test = tiny_dataset()
    class_counts = np.bincount(y_test, minlength=10)
    files = metrics_files(repo)
    assert set(files) == {f"{v}/seed-{s}" for v in VARIANTS for s in SEEDS}
    runs = {r.info.run_name: r for r in mlflow_runs(repo)[1] if r.data.tags.get("summary") != "true"}
    for name, path in files.items():
        variant, seed = name.split("/seed-")
        metrics = json.loads(path.read_text())
        assert (metrics["variant"], metrics["seed"]) == (variant, int(seed))
        assert metrics["eval_batch_size"] == 37
        assert metrics["test_examples"] == N_TEST
        # sanity: the data is easy (every run reaches 1.0 here); chance is 0.1, guessing uniformly costs ln 10
        accuracy, loss = metrics["test_accuracy"], metrics["test_loss"]
        assert accuracy > 0.9, f"{name}: test_accuracy {accuracy}"
        assert math.isfinite(loss) and 0.0 < loss < 0.5 * math.log(10), f"{name}: test_loss {loss}"
        correct = round(accuracy * N_TEST)
        assert abs(correct / N_TEST - accuracy) < 1e-12, "a test accuracy is a count of correct answers / 300"
        per_class = list(metrics["per_class_accuracy"].values())
        assert len(per_class) == 10
        assert all(0.0 <= a <= 1.0 for a in per_class)
        assert round(sum(a * n for a, n in zip(per_class, class_counts, strict=True))) == correct
        assert metrics["inference_images_per_second"] > 0
        # MLflow holds the same run and exactly the same numbers (float64 both ways)
        run = runs[name]
        assert metrics["run_id"] == run.info.run_id
        logged = run.data.metrics
        assert logged["test_accuracy"] == accuracy
        assert logged["test_loss"] == loss
        assert logged["inference_images_per_second"] == metrics["inference_images_per_second"]
        assert [logged[f"test_accuracy.class_{i}"] for i in range(10)] == per_class
        val = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")
        assert max(m.value for m in val) > 0.9, f"{name}: validation accuracy {[m.value for m in val]}"


def test_comparison_has_one_row_per_run_and_summary_per_variant(repo: Path):
    runs = pd.read_csv(repo / "reports" / "comparison.csv")
    assert len(runs) == len(VARIANTS) * len(SEEDS)
    assert set(zip(runs.variant, runs.seed, strict=True)) == {(v, s) for v in VARIANTS for s in SEEDS}
    _, mlflow_list = mlflow_runs(repo)
    assert set(runs.run_id) == {r.info.run_id for r in mlflow_list if r.data.tags.get("summary") != "true"}
    summary = pd.read_csv(repo / "reports" / "summary.csv")
    assert list(summary.variant) == VARIANTS
    assert (summary.n_seeds == len(SEEDS)).all()
    assert summary.loc[0, "trainable_params"] == 57_722
    assert summary.loc[1, "trainable_params"] == 810_362
    for figure in ("accuracy_vs_time", "learning_curves_val_accuracy", "confusion_matrices", "feature_maps_transposed"):
        assert (repo / "reports" / "figures" / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_repro_does_nothing_and_a_variant_edit_reruns_only_that_variant(repo: Path):
    assert changed_stages(repo) == set()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["variants"]["transposed"]["layers"][3]["units"] = 32
    params["variants"]["resize_conv"] = {
        "layers": [
            {"type": "conv", "filters": 8, "kernel_size": 5, "strides": 2},
            {"type": "upsample", "size": 2},
            {"type": "conv", "filters": 8, "kernel_size": 3},
            {"type": "flatten"},
            {"type": "dense", "units": 10, "activation": None},
        ]
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    expected = {
        f"{stage}@{v}-{s}" for stage in ("train", "evaluate") for v in ("transposed", "resize_conv") for s in SEEDS
    }
    # status lists the stages whose own deps changed; evaluate@transposed reruns once its model changed
    assert changed_stages(repo) == expected - {f"evaluate@transposed-{s}" for s in SEEDS} | {"compare"}
    before = {r.info.run_id for r in mlflow_runs(repo)[1]}
    output = dvc(repo, "repro").stdout
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    assert ran == expected | {"compare"}
    after = {r.info.run_name: r for r in mlflow_runs(repo)[1] if r.info.run_id not in before}
    assert sorted(name for name in after if name != "summary") == sorted(
        f"{v}/seed-{s}" for v in ("resize_conv", "transposed") for s in SEEDS
    )
    assert len(pd.read_csv(repo / "reports" / "comparison.csv")) == 3 * len(SEEDS)
    assert changed_stages(repo) == set()


def test_dvc_exp_run_in_a_temporary_copy_lands_in_the_workspace_store(repo: Path):
    before = {r.info.run_id for r in mlflow_runs(repo)[1]}
    dvc(repo, "exp", "run", "--temp", "--name", "eval-batch-50", "-S", "evaluate.batch_size=50")
    new = [r for r in mlflow_runs(repo)[1] if r.info.run_id not in before]
    assert [r.info.run_name for r in new] == ["summary"]
    assert new[0].data.tags["dvc.experiment"] == "eval-batch-50"
    # the evaluations were logged into the existing runs of the workspace store
    client = __import__("mlflow").MlflowClient()
    run_id = json.loads((repo / "metrics" / "baseline" / "seed-1.json").read_text())["run_id"]
    assert len(client.get_metric_history(run_id, "test_accuracy")) == 2
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))
    assert "eval-batch-50" in dvc(repo, "exp", "list", "--name-only").stdout


def run_queued_grid(repo: Path, prefix: str, **extra_env: str) -> str:
    """Queue two experiments (evaluate.batch_size 41 and 43), run them with two workers, wait; the status."""
    import time

    for batch_size in (41, 43):
        dvc(
            repo, "exp", "run", "--queue", "--name", f"{prefix}-{batch_size}", "-S", f"evaluate.batch_size={batch_size}"
        )
    dvc(repo, "queue", "start", "-j", "2", **extra_env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = dvc(repo, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    return status


def test_parallel_queued_experiments_all_land_in_the_embedded_store(repo: Path):
    before = {r.info.run_id for r in mlflow_runs(repo)[1]}
    status = run_queued_grid(repo, "eval")
    assert "Failed" not in status, status + dvc(repo, "queue", "logs", "eval-41").stdout
    assert status.count("Success") >= 2, status
    new = [r for r in mlflow_runs(repo)[1] if r.info.run_id not in before]
    assert sorted(r.data.tags.get("dvc.experiment") for r in new) == ["eval-41", "eval-43"]
    assert all(r.info.status == "FINISHED" for r in new)
    for name in ("eval-41", "eval-43"):
        assert "database is locked" not in dvc(repo, "queue", "logs", name).stdout


def test_kill_9_mid_training_leaves_nothing_dvc_trusts_and_the_rerun_succeeds(repo: Path):
    import time

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(steps=20_000, validation_every=1_000)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.Popen(
        ["dvc", "repro", "train@baseline-1"],
        cwd=repo,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        Lines(proc.stdout).wait_for("step     0/20000", timeout=300)
        time.sleep(0.5)
    finally:
        kill_group(proc)  # SIGKILL to dvc and the stage it runs
        proc.stdout.close()
    assert proc.returncode == -9
    assert not (repo / "models" / "baseline" / "seed-1").exists()
    assert "train@baseline-1" in changed_stages(repo)
    params["train"].update(steps=41, validation_every=20)  # back to a quick rerun
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(repo, "repro", "train@baseline-1")
    assert (repo / "models" / "baseline" / "seed-1" / "model.keras").exists()
    assert not list((repo / "models" / "baseline").glob(".seed-1.partial-*"))
    assert "train@baseline-1" not in changed_stages(repo)
