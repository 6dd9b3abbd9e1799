"""End to end: `dvc repro` in a temporary git repo on a small generated dataset, then MLflow read back.

The project is built once per session (tests/e2e/conftest.py, `built_project`): the tests that only
read it share it; a test that changes it (a params edit, an experiment, a kill) works on its own copy
(`project_copy`), so that each test holds alone and in any order.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from dvc_project import (
    N_TEST,
    SEEDS,
    VARIANTS,
    changed_stages,
    dvc,
    head,
    metrics_files,
    mlflow_runs,
    run_queued_grid,
    tiny_dataset,
)
from support import Lines, clean_env, kill_group

TRAINABLE_PARAMS = {"baseline": 57_722, "transposed": 810_362}


def test_every_variant_and_seed_has_a_finished_run_with_params_metrics_and_model(built_project: Path):
    repo = built_project
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
        assert run.data.params["evaluate.batch_size"] == "37"
        assert run.data.params["data.dataset"] == "tiny"
        # fixed by the variant: params, not one-point metrics
        assert run.data.params["trainable_params"] == str(TRAINABLE_PARAMS[variant])
        assert int(run.data.params["flops_per_image"]) > 0
        assert "trainable_params" not in run.data.metrics and "flops_per_image" not in run.data.metrics
        assert run.data.tags["dvc.stage"] == f"train@{variant}"
        assert run.data.tags["git.commit"] == run.data.tags["mlflow.source.git.commit"] == head(repo)
        # the training metrics: the mean of the last 20 steps of history.csv, every 20 steps and at
        # each validation (the compare stage's curves, number for number); every step is an artifact
        per_step = pd.read_csv(repo / "models" / variant / f"seed-{seed}" / "history.csv")
        for key in ("loss", "accuracy"):
            history = mlflow.MlflowClient().get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == [0, 19, 20, 39, 40]
            window = per_step[key].rolling(20, min_periods=1).mean()
            for metric in history:
                assert metric.value == pytest.approx(window[metric.step], rel=1e-9), (name, key, metric.step)
        logged_history = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/history.csv")
        assert pd.read_csv(io.StringIO(logged_history)).equals(per_step)
        val = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in val] == [0, 20, 40]
        models = mlflow.search_logged_models(
            experiment_ids=[experiment.experiment_id],
            filter_string=f"source_run_id = '{run.info.run_id}'",
            output_format="list",
        )
        assert len(models) == 1
        assert models[0].name == f"{variant}-seed{seed}"
        info = mlflow.models.get_model_info(f"models:/{models[0].model_id}")
        assert info.signature is not None
        assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 28, 28)  # plain images
        assert info.saved_input_example_info is not None
        # linked to the last step's metrics (step 40 of 0..40), not to the untrained step 0
        linked = {m.key: m for m in models[0].metrics}
        assert linked["val_accuracy"].step == 40
        assert linked["val_accuracy"].value == val[-1].value
        # the store's artifacts live beside it in the project, not in the stage's working folder
        assert models[0].artifact_location.startswith((repo / "mlartifacts").as_uri())
        datasets = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
        assert set(datasets) == {"tiny-train", "tiny-validation", "tiny-test"}
        meta = json.loads((repo / "data" / "prepared" / "tiny" / "meta.json").read_text())
        assert datasets["tiny-test"].digest == meta["split_sha256"]["test"][:36]
    # a run lasts as long as its seed's training and testing: the runs of a variant follow each other
    # and none spans more than its own work plus a few seconds of saving and logging
    for variant in VARIANTS:
        ordered = [training[f"{variant}/seed-{s}"] for s in SEEDS]
        for earlier, later in itertools.pairwise(ordered):
            assert earlier.info.end_time <= later.info.start_time
        for run in ordered:
            record = json.loads(
                (repo / "models" / variant / f"seed-{run.data.params['seed']}" / "run.json").read_text()
            )
            work = record["train_seconds"] + record["trace_seconds"] + record["validation_seconds"]
            assert (run.info.end_time - run.info.start_time) / 1000 < work + 30
    # the compare stage's summary runs are in their own experiment, out of the training runs' pickers
    assert not [r for r in runs if r.data.tags.get("summary") == "true"]
    reports = mlflow.get_experiment_by_name("deconvolution-reports")
    summaries = mlflow.search_runs([reports.experiment_id], output_format="list")
    assert [r.info.run_name for r in summaries] == ["summary"]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_every_run_learns_and_mlflow_holds_the_metrics_files_values(built_project: Path):
    repo = built_project
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
        table = pd.read_csv(io.StringIO(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/per_class_accuracy.csv")))
        assert list(table.test_accuracy) == per_class
        assert list(table.test_examples) == list(class_counts)
        # the logged model carries the test metrics, linked to the test dataset
        (model,) = mlflow.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run.info.run_id}'",
            output_format="list",
        )
        test_accuracy = next(m for m in model.metrics if m.key == "test_accuracy")
        assert (test_accuracy.value, test_accuracy.dataset_name) == (accuracy, "tiny-test")
        val = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")
        assert max(m.value for m in val) > 0.9, f"{name}: validation accuracy {[m.value for m in val]}"


def test_comparison_has_one_row_per_run_and_summary_per_variant(built_project: Path):
    repo = built_project
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


def champions(repo: Path) -> dict[str, tuple[str, list[str]]]:
    """Per registered model: the run id its champion version came from, and all its versions."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    out = {}
    for variant in VARIANTS:
        name = f"deconvolution-{variant}"
        champion = client.get_model_version_by_alias(name, "champion")
        model = mlflow.get_logged_model(champion.source.removeprefix("models:/"))
        out[variant] = (
            model.source_run_id,
            sorted(str(v.version) for v in client.search_model_versions(f"name = '{name}'")),
        )
    return out


def test_each_variants_best_seed_by_validation_is_registered_as_champion(built_project: Path):
    repo = built_project
    import mlflow

    registered = champions(repo)
    for variant in VARIANTS:
        records = [json.loads((repo / "models" / variant / f"seed-{s}" / "run.json").read_text()) for s in SEEDS]
        best = max(records, key=lambda r: (r["val_accuracy"], -r["seed"]))  # validation, never test
        run_id, versions = registered[variant]
        assert run_id == best["run_id"]
        assert versions == ["1"]
        version = mlflow.MlflowClient().get_model_version_by_alias(f"deconvolution-{variant}", "champion")
        assert version.tags["git.commit"] == head(repo)
        assert version.tags["dataset"] == "tiny"
        assert version.tags["dvc.experiment"] == "workspace"


def test_second_repro_does_nothing_and_a_variant_edit_reruns_only_that_variant(project_copy: Path):
    repo = project_copy
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
    expected = {"train@transposed", "train@resize_conv"}
    assert changed_stages(repo) == expected | {"compare"}
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
    # the registry: an unchanged model keeps its version, a retrained one gets a new version and the alias
    registered = champions(repo)
    assert registered["baseline"][1] == ["1"]
    assert registered["transposed"][1] == ["1", "2"]
    assert registered["transposed"][0] in {after[f"transposed/seed-{s}"].info.run_id for s in SEEDS}


# units: acc and trained_share fractions, vs_baseline_pp percentage points, train_seconds seconds
SUMMARY_KEYS = {"acc", "vs_baseline_pp", "trained_share", "train_seconds"}


def exp_show(repo: Path) -> dict[str, dict]:
    """`dvc exp show --json`, each row's data (params, metrics, ...) by its name: `workspace`, the
    commit's branch, each experiment's name."""
    rows = {}
    for commit in json.loads(dvc(repo, "exp", "show", "--json").stdout):
        rows[commit["name"] or commit["rev"]] = commit["data"]
        for experiment in commit.get("experiments") or []:
            for rev in experiment["revs"]:
                rows[rev["name"] or rev["rev"]] = rev["data"]
    return rows


def test_dvc_exp_run_in_a_temporary_copy_lands_in_the_workspace_store(project_copy: Path):
    """evaluate.batch_size is a param of the train stages (they test what they train): the experiment
    retrains every run, in a copy of the repo, and logs them to the workspace's store."""
    repo = project_copy
    before = {r.info.run_id for name in ("deconvolution", "deconvolution-reports") for r in mlflow_runs(repo, name)[1]}
    dvc(repo, "exp", "run", "--temp", "--name", "eval-batch-50", "-S", "evaluate.batch_size=50")
    new = [r for r in mlflow_runs(repo)[1] if r.info.run_id not in before]
    variants = yaml.safe_load((repo / "params.yaml").read_text())["variants"]
    assert len(new) == len(variants) * len(SEEDS)
    assert {r.data.tags["dvc.experiment"] for r in new} == {"eval-batch-50"}
    assert {r.data.params["evaluate.batch_size"] for r in new} == {"50"}
    summaries = [r for r in mlflow_runs(repo, "deconvolution-reports")[1] if r.info.run_id not in before]
    assert [r.info.run_name for r in summaries] == ["summary"]
    assert summaries[0].data.tags["dvc.experiment"] == "eval-batch-50"
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))
    assert "eval-batch-50" in dvc(repo, "exp", "list", "--name-only").stdout
    rows = assert_dvc_compares_experiments_by_the_summary_per_variant_only(repo, ["eval-batch-50"])
    assert rows["eval-batch-50"]["params"]["params.yaml"]["data"]["evaluate"]["batch_size"] == 50


def test_parallel_queued_experiments_all_land_in_the_embedded_store(project_copy: Path):
    """Two experiments queued and run by two workers at once (dvc_project.run_queued_grid: each
    retrains the baseline with another hidden layer, then compares) log to the one SQLite store."""
    repo = project_copy
    before = {r.info.run_id for name in ("deconvolution", "deconvolution-reports") for r in mlflow_runs(repo, name)[1]}
    status = run_queued_grid(repo, "eval")
    assert "Failed" not in status, status + dvc(repo, "queue", "logs", "eval-41").stdout
    assert status.count("Success") >= 2, status
    new = [r for r in mlflow_runs(repo, "deconvolution-reports")[1] if r.info.run_id not in before]
    assert sorted(r.data.tags.get("dvc.experiment") for r in new) == ["eval-41", "eval-43"]
    assert all(r.info.status == "FINISHED" for r in new)
    training = [r for r in mlflow_runs(repo)[1] if r.info.run_id not in before]
    assert sorted((r.data.tags["dvc.experiment"], r.info.run_name) for r in training) == [
        (f"eval-{units}", f"baseline/seed-{seed}") for units in (41, 43) for seed in SEEDS
    ]
    assert all(r.info.status == "FINISHED" for r in training)
    for name in ("eval-41", "eval-43"):
        assert "database is locked" not in dvc(repo, "queue", "logs", name).stdout
    rows = assert_dvc_compares_experiments_by_the_summary_per_variant_only(repo, ["eval-41", "eval-43"])
    for units in (41, 43):
        layers = rows[f"eval-{units}"]["params"]["params.yaml"]["data"]["variants"]["baseline"]["layers"]
        assert layers[3] == {"type": "dense", "units": units}


def test_kill_9_mid_training_leaves_nothing_dvc_trusts_and_the_rerun_succeeds(project_copy: Path):
    """kill -9 in seed 2 of train@baseline: seed 1's folder is whole, but DVC records none of the
    stage's outputs, and the rerun trains both seeds and leaves no partial folder."""
    repo = project_copy
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(steps=5_000, validation_every=1_000)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.Popen(
        ["dvc", "repro", "train@baseline"],
        cwd=repo,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        Lines(proc.stdout).wait_for("baseline/seed-2 (2/2): step     0/5000", timeout=600)
        time.sleep(0.5)
    finally:
        kill_group(proc)  # SIGKILL to dvc and the stage it runs
        proc.stdout.close()
    assert proc.returncode == -9
    assert json.loads((repo / "models" / "baseline" / "seed-1" / "run.json").read_text())["steps"] == 5_000
    assert not (repo / "models" / "baseline" / "seed-2").exists()
    assert "train@baseline" in changed_stages(repo)
    params["train"].update(steps=41, validation_every=20)  # back to a quick rerun
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(repo, "repro", "train@baseline")
    for seed in SEEDS:
        assert json.loads((repo / "models" / "baseline" / f"seed-{seed}" / "run.json").read_text())["steps"] == 41
    assert not list((repo / "models" / "baseline").glob(".seed-*.partial-*"))
    assert "train@baseline" not in changed_stages(repo)


def assert_dvc_compares_experiments_by_the_summary_per_variant_only(repo: Path, experiments: list[str]) -> dict:
    """`dvc exp show` of the workspace and of `experiments`: the only DVC metrics are
    reports/summary.json's few numbers per variant, no per-seed file; `dvc metrics diff` against the
    first experiment lists those keys, and nothing per seed. Returns exp_show's rows."""
    rows = exp_show(repo)
    for name, data in rows.items():
        files = set(data.get("metrics") or {})
        assert not [f for f in files if f.startswith("metrics/")], f"{name}: per-seed metrics {sorted(files)}"
        assert files <= {"reports/summary.json"}, f"{name}: {sorted(files)}"
    table = pd.read_csv(repo / "reports" / "summary.csv").set_index("variant")
    variants = list(table.index)
    for name in ["workspace", *experiments]:
        summary = rows[name]["metrics"]["reports/summary.json"]["data"]
        assert list(summary) == variants, name
        for variant, values in summary.items():
            # the baseline's difference from itself is null in summary.json, which DVC leaves out
            assert set(values) == SUMMARY_KEYS - ({"vs_baseline_pp"} if variant == "baseline" else set()), name
            assert 0.0 <= values["acc"] <= 1.0 and 0.0 <= values["trained_share"] <= 1.0
            assert values["train_seconds"] > 0

    # the workspace's numbers are summary.csv's means
    for variant, values in rows["workspace"]["metrics"]["reports/summary.json"]["data"].items():
        expected = table.loc[variant]
        assert values["acc"] == pytest.approx(expected["test_accuracy_mean"], rel=1e-12)
        assert values["trained_share"] == pytest.approx(expected["trained_share"], rel=1e-12)
        assert values["train_seconds"] == pytest.approx(expected["train_seconds_mean"], rel=1e-12)
        if variant != "baseline":
            # in points: 100 x summary.csv's fraction, as summary.md's "vs baseline, pp" column
            assert values["vs_baseline_pp"] == pytest.approx(100 * expected["diff_vs_baseline_mean"], abs=1e-10)

    # `dvc metrics diff <experiment>` (against the workspace) lists those keys, and nothing per seed
    first = experiments[0]
    diff = json.loads(dvc(repo, "metrics", "diff", first, "--all", "--json").stdout)
    assert list(diff) == ["reports/summary.json"]
    expected_keys = {f"{v}.{k}" for v in variants for k in SUMMARY_KEYS} - {"baseline.vs_baseline_pp"}
    assert set(diff["reports/summary.json"]) == expected_keys
    text = dvc(repo, "metrics", "diff", first, "--all").stdout
    assert "transposed.acc" in text and f"{variants[-1]}.trained_share" in text
    assert "metrics/" not in text and "seed" not in text
    return rows


def test_dvc_remote_push_then_pull_restores_everything(project_copy: Path, tmp_path: Path):
    repo = project_copy  # a built project: data and models to share
    dvc(repo, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    dvc(repo, "push")
    model = repo / "models" / "transposed" / "seed-1" / "model.keras"
    before = model.read_bytes()
    shutil.rmtree(repo / ".dvc" / "cache")
    for out in ("data", "models"):
        shutil.rmtree(repo / out)
    dvc(repo, "pull", "--with-deps", "train@transposed")
    assert model.read_bytes() == before
    assert {"fetch", "prepare", "train@transposed"}.isdisjoint(changed_stages(repo))
