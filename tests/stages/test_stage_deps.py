"""What an edit to the code reruns, as `dvc status` says it: the project's dvc.yaml, params.yaml and
pipeline/ in a temporary DVC repository whose stages are all committed as up to date (stand-in
outputs, no training), then one module edited at a time."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support import ROOT

TRAIN_STAGES = "train@"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from dvc.repo import Repo

    root = tmp_path_factory.mktemp("deps")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    here = Path.cwd()
    os.chdir(root)  # DVC resolves a stage's paths against the working directory
    repo = Repo.init(str(root), no_scm=True)
    for stage in repo.index.stages:  # every output and data dep present, so that every stage can be committed
        for path in [Path(entry.fs_path) for entry in (*stage.outs, *stage.deps)]:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("stand-in\n")
    repo.commit(None, force=True)
    assert repo.status() == {}, "the committed repository should start up to date"
    yield repo
    repo.close()
    os.chdir(here)


def out_of_date(repo, module: str) -> set[str]:
    """The stages `dvc status` names after a comment is appended to `module` (then put back)."""
    path = Path(repo.root_dir) / module
    original = path.read_bytes()
    path.write_bytes(original + b"\n# an edit\n")
    try:
        return set(repo.status())
    finally:
        path.write_bytes(original)
        assert repo.status() == {}


def test_editing_code_only_compare_uses_leaves_training_up_to_date(repo):
    # the report's figures (accuracy_vs_time_figure among them) and its Markdown
    for module in ("pipeline/figures.py", "pipeline/summary_text.py", "pipeline/reporting.py"):
        assert out_of_date(repo, module) == {"compare"}, module


def test_editing_the_registry_leaves_training_up_to_date(repo):
    assert out_of_date(repo, "pipeline/registry.py") == {"compare"}


def test_editing_the_layer_vocabulary_leaves_fetch_and_prepare_up_to_date(repo):
    stale = out_of_date(repo, "pipeline/layers.py")
    assert "fetch" not in stale and "prepare" not in stale, sorted(stale)
    trains = {s.addressing for s in repo.index.stages if s.addressing.startswith(TRAIN_STAGES)}
    assert trains and trains <= stale  # the edit does rerun every variant's training
