"""End to end: `dvc repro` in a temporary git repo on a small generated dataset, then MLflow read back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from support import ROOT

from pipeline.datasets import IDX_FILES, file_sha256, write_idx

pytestmark = pytest.mark.slow


SEEDS = [1, 2]
VARIANTS = ["baseline", "transposed"]


def learnable_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Digits stand-in: class k is a bright bar at rows 2k..2k+3 plus noise, so a CNN learns it fast."""
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        images[i, 2 * k + 2 : 2 * k + 6, 4:24] = 230
    return images, labels


def make_repo(path: Path) -> dict:
    """A git + DVC repo holding this project's pipeline, with params for a tiny local IDX dataset."""
    path.mkdir()
    for item in ("dvc.yaml", "pipeline", ".gitignore"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, path / item)
    shutil.rmtree(path / "pipeline" / "__pycache__", ignore_errors=True)
    raw = path.parent / "mirror"
    raw.mkdir()
    rng = np.random.default_rng(0)
    x_train, y_train = learnable_images(700, rng)
    x_test, y_test = learnable_images(300, rng)
    for key, array in zip(IDX_FILES, (x_train, y_train, x_test, y_test), strict=True):
        write_idx(raw / IDX_FILES[key], array)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(
        dataset="tiny",
        mirrors=[str(raw)],
        sha256={name: file_sha256(raw / name) for name in IDX_FILES.values()},
        validation_size=100,
    )
    params["train"].update(steps=41, validation_every=20, seeds=SEEDS, batch_size=16)
    params["evaluate"]["batch_size"] = 37  # not the training batch size, not a divisor of 300
    params["variants"] = {name: params["variants"][name] for name in VARIANTS}
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=path, check=True, env=env())
    return params


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    out.update(extra)
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
    out["TF_CPP_MIN_LOG_LEVEL"] = "3"
    for key in ("GIT_AUTHOR", "GIT_COMMITTER"):
        out[f"{key}_NAME"], out[f"{key}_EMAIL"] = "test", "test@localhost"
    return out


def dvc(repo: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["dvc", *args], cwd=repo, env=env(**extra_env), capture_output=True, text=True, timeout=900)
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
        assert len(run.data.tags["git.commit"]) in (40, len("unknown"))
        accuracy = run.data.metrics["test_accuracy"]
        assert 0.0 <= accuracy <= 1.0
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


def test_baseline_learns_the_easy_dataset(repo: Path):
    for seed in SEEDS:
        metrics = json.loads((repo / "metrics" / "baseline" / f"seed-{seed}.json").read_text())
        assert metrics["test_accuracy"] > 0.5, "10 classes: chance is 0.1"
        assert metrics["eval_batch_size"] == 37
        assert metrics["test_examples"] == 300


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
    import signal
    import time

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(steps=20_000, validation_every=1_000)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.Popen(
        ["dvc", "repro", "train@baseline-1"],
        cwd=repo,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    for line in proc.stdout:
        if "step     0/20000" in line:
            break
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (repo / "models" / "baseline" / "seed-1").exists()
    assert "train@baseline-1" in changed_stages(repo)
    params["train"].update(steps=41, validation_every=20)  # back to a quick rerun
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(repo, "repro", "train@baseline-1")
    assert (repo / "models" / "baseline" / "seed-1" / "model.keras").exists()
    assert not list((repo / "models" / "baseline").glob(".seed-1.partial-*"))
    assert "train@baseline-1" not in changed_stages(repo)
