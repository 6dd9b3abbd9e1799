"""A bad params.yaml stops a stage with exit code 2 and a message naming the key, no traceback."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import yaml
from support import ROOT, arg_value, run_stage_here, stage_args, stage_outs, write_prepared

SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())


def fetch_with(raw: dict, tmp_path) -> subprocess.CompletedProcess:
    """Run the fetch stage (the first one) on a params file holding `raw`."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "pipeline.stages.fetch", "--params", str(tmp_path / "params.yaml")]
    return subprocess.run(
        [*command, "--out", str(tmp_path / "raw")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_a_stage_reports_a_bad_param_without_a_traceback(tmp_path):
    raw = copy.deepcopy(SHIPPED)
    raw["data"]["scalling"] = "unit"
    result = fetch_with(raw, tmp_path)
    assert result.returncode == 2
    assert "error:" in result.stderr and "data.scalling: unknown key" in result.stderr
    assert "did you mean 'scaling'?" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "raw").exists()


def test_a_variant_whose_shapes_cannot_work_stops_the_first_train_stage_before_any_training(
    tmp_path, monkeypatch, capsys
):
    """Every train stage checks every variant, so a bad one stops `dvc repro` at its first training
    stage, whichever variant that trains; fetch and prepare do not read the variants. (The stage runs
    in this process, support.run_stage_here: the check comes after TensorFlow's import.)"""
    raw = copy.deepcopy(SHIPPED)
    raw["variants"]["transposed"]["layers"].insert(2, {"type": "dense", "units": 8})  # before flatten
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    raw["train"]["threads"] = cores  # TensorFlow may already run in this process, one thread per core
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    write_prepared(tmp_path / arg_value(stage_args("train", raw, variant="baseline"), "--data"))
    monkeypatch.chdir(tmp_path)
    result = run_stage_here("train", stage_args("train", raw, variant="baseline"), capsys)
    assert result.returncode == 2, result.stderr
    # the third layer of the list is "layer 3": counted from 1, as users count
    assert "error: variants.transposed: layer 3 (dense): dense needs a flat input" in result.stderr
    assert "add {type: flatten} before it" in result.stderr
    assert not any((tmp_path / out).exists() for out in stage_outs("train", raw, variant="baseline"))
    assert not (tmp_path / "mlflow.db").exists()
