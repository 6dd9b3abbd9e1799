"""pipeline.run_logging where it runs a process: the git commit every run is tagged with."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support import commit_all, git_init

from pipeline import run_logging


@pytest.fixture(autouse=True)
def _git_finds_only_our_repos(tmp_path: Path, monkeypatch):
    """git looks for a repo from the given folder up to tmp_path, never in a repo around it."""
    for key in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))


def test_git_commit_is_the_head_of_the_repo_the_stage_runs_in(tmp_path: Path, monkeypatch):
    repo = tmp_path / "repo"
    git_init(repo)
    (repo / "a.txt").write_text("a\n")
    first = commit_all(repo, "first")
    assert re.fullmatch(r"[0-9a-f]{40}", first)
    assert run_logging.git_commit(repo) == first
    (repo / "a.txt").write_text("b\n")
    second = commit_all(repo, "second")
    assert second != first
    assert run_logging.git_commit(repo) == second
    (repo / "sub").mkdir()
    monkeypatch.chdir(repo / "sub")  # a stage runs in the repo; its tags name the commit checked out
    tags = run_logging.context_tags()
    assert tags["git.commit"] == tags["mlflow.source.git.commit"] == second


def test_git_commit_is_unknown_outside_a_repo_and_before_the_first_commit(tmp_path: Path, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert run_logging.git_commit(plain) == "unknown"
    monkeypatch.chdir(plain)
    assert run_logging.context_tags()["git.commit"] == "unknown"
    empty = tmp_path / "empty"
    git_init(empty)
    assert run_logging.git_commit(empty) == "unknown"
