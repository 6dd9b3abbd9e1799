"""`python -m pipeline grid` on a local Ray and on a 2-node localhost cluster.

Every test that starts Ray runs it in a network namespace holding only loopback (tests/grid_cluster.py,
`netns_command`): Ray binds its ports on every interface, and there no other interface exists. The
scenarios run as one process each in such a namespace; these tests assert what they left.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from grid_cluster import make_project, mlflow_runs, netns_available, netns_command
from support import BIN, ROOT, clean_env, free_port, run

from pipeline.results import RESULT_COLUMNS

needs_netns = pytest.mark.skipif(not netns_available(), reason="no `unshare --net` here to keep Ray on loopback")


def scenario(name: str, folder: Path) -> dict:
    """Run a scenario of tests/grid_cluster.py in its own loopback-only network namespace."""
    folder.mkdir(parents=True, exist_ok=True)
    environment = clean_env(PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    done = run(netns_command([BIN / "python", ROOT / "tests" / "grid_cluster.py", name, folder]), env=environment)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return json.loads((folder / "result.json").read_text())


def outputs(root: Path, variant: str, seed: int) -> dict[str, object]:
    """What a run's numbers are: every step's loss and accuracy, every validation, the test metrics
    and the trained weights (timings and run ids aside)."""
    import keras

    model_dir = root / "models" / variant / f"seed-{seed}"
    metrics = json.loads((root / "metrics" / variant / f"seed-{seed}.json").read_text())
    weights = keras.saving.load_model(model_dir / "model.keras").get_weights()
    return {
        "history.csv": (model_dir / "history.csv").read_bytes(),
        "validation.csv": (model_dir / "validation.csv").read_bytes(),
        "test": (metrics["test_accuracy"], metrics["test_loss"], metrics["per_class_accuracy"]),
        "weights": [w.tobytes() for w in weights],
    }


@pytest.fixture(scope="module")
def same_numbers(tmp_path_factory) -> tuple[dict, Path]:
    folder = tmp_path_factory.mktemp("same-numbers")
    return scenario("same_numbers", folder), folder / "project"


@needs_netns
def test_one_run_gives_the_same_numbers_in_process_as_a_local_task_and_on_either_node(same_numbers):
    _, project = same_numbers
    nodes = {}
    for line in (project / "g-cluster" / "tasks.jsonl").read_text().splitlines():
        task = json.loads(line)
        nodes[(task["variant"], task["seed"])] = task["node"]
    for variant in ("baseline", "transposed"):
        for seed in (1, 2):
            in_process = outputs(project / "in-process", variant, seed)  # the train stage, one core visible
            assert outputs(project / "g-local", variant, seed) == in_process, f"{variant}/{seed}: local task"
            assert outputs(project / "g-cluster", variant, seed) == in_process, f"{variant}/{seed}: on the cluster"
    assert len(set(nodes.values())) == 2, f"the cluster's tasks all ran on one node: {nodes}"


@needs_netns
def test_the_grid_writes_runs_csv_and_its_mlflow_runs_carry_train_threads(same_numbers):
    result, project = same_numbers
    table = pd.read_csv(project / "g-local" / "runs.csv")
    assert list(table.columns) == RESULT_COLUMNS
    assert sorted(zip(table["variant"], table["seed"], strict=True)) == [
        ("baseline", 1),
        ("baseline", 2),
        ("transposed", 1),
        ("transposed", 2),
    ]
    assert set(table["threads"]) == {1}  # the CSV records the thread setting each run had
    assert (table["test_accuracy"] > 0.5).sum() >= 3  # the bars are learnable: most runs far above chance (0.1)
    runs = [r for r in mlflow_runs(f"sqlite:///{project / 'mlflow.db'}") if r.data.tags.get("dvc.stage") == "grid"]
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4
    assert {r.data.params["train.threads"] for r in runs} == {"1"}
    assert {r.info.run_id for r in runs} == set(table["run_id"])


@needs_netns
def test_ray_listens_on_loopback_only_in_the_tests(same_numbers):
    result, _ = same_numbers
    assert result["interfaces"] == ["lo"]
    assert set(result["listening"]) <= {"127.0.0.1", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::"}


@needs_netns
def test_a_worker_node_killed_mid_grid_loses_no_run_and_doubles_none(tmp_path):
    result = scenario("node_dies", tmp_path)
    assert result["returncode"] == 0, result["log"]
    tasks = [json.loads(line) for line in (tmp_path / "project" / "g" / "tasks.jsonl").read_text().splitlines()]
    assert any("error" in t for t in tasks), f"no task was in flight on the killed node: {tasks}"
    table = pd.read_csv(tmp_path / "project" / "g" / "runs.csv")
    keys = sorted(zip(table["variant"], table["seed"], strict=True))
    assert keys == sorted((v, s) for v in ("baseline", "transposed") for s in (1, 2))
    runs = mlflow_runs(f"sqlite:///{result['server_db']}")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finished = [(r.data.tags["variant"], int(r.data.tags["seed"])) for r in runs if r.info.status == "FINISHED"]
    assert sorted(finished) == keys  # exactly one FINISHED run per variant x seed
    assert set(table["run_id"]) == {r.info.run_id for r in runs if r.info.status == "FINISHED"}


@needs_netns
def test_an_interrupted_grid_resumes_without_running_finished_runs_again(tmp_path):
    result = scenario("interrupt_resume", tmp_path)
    assert result["first"] == 130, result["first_log"]
    assert "interrupted:" in result["first_log"] and "Run the same command again" in result["first_log"]
    assert result["running_after_interrupt"] == []
    assert result["second"] == 0, result["second_log"]
    project = tmp_path / "project"
    table = pd.read_csv(project / "g" / "runs.csv")
    assert sorted(table["seed"]) == [1, 2, 3]
    kept = {(t["variant"], t["seed"]): t["run_id"] for t in result["finished_before"]}
    for (variant, seed), run_id in kept.items():  # finished before Ctrl-C: not trained again
        assert table.set_index("seed").loc[seed, "run_id"] == run_id, (variant, seed)
    runs = mlflow_runs(f"sqlite:///{project / 'mlflow.db'}")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finished = sorted(int(r.data.tags["seed"]) for r in runs if r.info.status == "FINISHED")
    assert finished == [1, 2, 3]
    assert not list(project.glob("g/**/.*partial*"))


# --- bad input: refused before Ray starts (no namespace needed) -------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("bad-input") / "project")


def grid(project: Path, *args: str, **extra_env: str):
    command = [BIN / "python", "-m", "pipeline", "grid", "--no-progress", *args]
    return run(command, cwd=project, env=clean_env(**extra_env), timeout=120)


def test_a_cluster_with_the_sqlite_store_is_refused_with_what_to_do(project):
    done = grid(project, "--out", "g", "--address", f"127.0.0.1:{free_port()}")
    assert done.returncode == 2
    assert "cannot write to sqlite:///" in done.stderr and "MLFLOW_TRACKING_URI=http://" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (project / "g").exists()


def test_an_unreachable_cluster_address_fails_within_seconds(project):
    started = time.monotonic()
    done = grid(
        project, "--out", "g", "--address", f"127.0.0.1:{free_port()}", MLFLOW_TRACKING_URI="http://127.0.0.1:9"
    )
    assert done.returncode == 2
    assert "cannot reach the Ray cluster at 127.0.0.1:" in done.stderr and "ray start --head" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "1-x"], "--seeds '1-x': '1-x' is not a seed or a range"),
        (["--seeds", "5-1"], "runs backwards; write 1-5"),
        (["--variants", "transposd"], "variant 'transposd' is not in params.yaml (did you mean 'transposed'?)"),
        (["--set", "train.stepz=5"], "train.stepz: unknown key (did you mean 'steps'?)"),
        (["--set", "train.steps"], "write KEY=VALUE as for `dvc exp run -S`"),
        (["--set", "train.threads=0"], "train.threads: Input should be greater than 0"),
    ],
)
def test_bad_grid_arguments_get_a_message_not_a_traceback(project, args, message):
    done = grid(project, "--out", "g", *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (project / "g").exists()


def test_set_values_follow_dvc_exp_run_s(project):
    from pipeline.grid.spec import apply_settings

    params = apply_settings(
        project / "params.yaml",
        [
            "train.steps=7",
            "~variants.transposed",
            "+variants.wide={layers: [{type: flatten}, {type: dense, units: 10}]}",
        ],
    )
    assert params.train.steps == 7
    assert list(params.variants) == ["baseline", "wide"]
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["steps"] == 41  # the file is untouched
