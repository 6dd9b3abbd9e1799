"""The prepare stage on generated raw files: a loadable prepared folder, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from idx_server import make_idx_dataset
from support import ROOT as REPO

from pipeline import prepared
from pipeline.datasets import IDX_FILES, file_sha256
from pipeline.preparation import prepare_arrays

VARIANTS = {"baseline": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": None}]}}


@pytest.fixture
def raw(tmp_path):
    return make_idx_dataset(tmp_path / "raw" / "tiny", n_train=50, n_test=20)


def run_prepare(tmp_path: Path, data: dict) -> subprocess.CompletedProcess:
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"data": data, "variants": VARIANTS}))
    return subprocess.run(
        [sys.executable, "-m", "pipeline.stages.prepare", "--params", str(params_file)]
        + ["--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "prepared")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_stage_writes_a_loadable_prepared_folder(raw, tmp_path):
    data = {"dataset": "tiny", "sha256": raw["sha256"], "validation_size": 12, "split_seed": 5, "scaling": "centered"}
    result = run_prepare(tmp_path, data)
    assert result.returncode == 0, result.stderr
    assert "train 38, valid 12, test 20" in result.stdout
    out = tmp_path / "prepared" / "tiny"
    assert [p.name for p in out.parent.iterdir()] == ["tiny"]  # no scratch folder left
    got = prepared.load(out)
    a = raw["arrays"]
    expected = prepare_arrays(
        a["train_images"],
        a["train_labels"],
        a["test_images"],
        a["test_labels"],
        validation_size=12,
        seed=5,
        scaling="centered",
    )
    for key, value in expected.items():
        assert getattr(got, key).dtype == value.dtype
        np.testing.assert_array_equal(getattr(got, key), value)
    assert got.classes == tuple(str(i) for i in range(10))
    assert got.dataset == "tiny" and got.scaling == "centered"
    assert got.x_test.min() == -0.5 and got.x_test.max() == 0.5  # the generated images use 0 and 255
    directory = raw["directory"]
    assert got.source_sha256 == tuple(file_sha256(directory / n) for n in IDX_FILES.values())


def test_stage_reports_missing_raw_files(tmp_path):
    sha = {name: "a" * 64 for name in IDX_FILES.values()}
    result = run_prepare(tmp_path, {"dataset": "tiny", "sha256": sha})
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "file not found (run the fetch stage first)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "prepared" / "tiny").exists()
