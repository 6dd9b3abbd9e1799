"""The grid's pieces that need no Ray: seeds, variants, version checks, writing and resuming by files."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import ConfigError, UserError
from pipeline.grid import cluster, driver, ledger
from pipeline.grid.spec import parse_seeds, select_variants


def test_seeds_are_ranges_and_lists_in_order_each_once():
    assert parse_seeds("1-5") == [1, 2, 3, 4, 5]
    assert parse_seeds("3, 1-2,2,7") == [3, 1, 2, 7]
    assert parse_seeds("30") == [30]
    for bad in ("", "1-", "a", "1..3", "4-2"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_variants_are_checked_with_a_hint_and_default_to_all():
    from support import ROOT

    from pipeline.config import load_params

    params = load_params(ROOT / "params.yaml")
    assert select_variants(params, None) == list(params.variants)
    assert select_variants(params, "transposed, baseline,baseline") == ["transposed", "baseline"]
    with pytest.raises(ConfigError, match="did you mean 'baseline'"):
        select_variants(params, "baselin")


def test_version_differences_are_named_per_package():
    here = {"python": "3.11.7", "tensorflow": "2.21.0", "numpy": "2.3.0"}
    cluster.check_versions(here, [dict(here), dict(here)])
    with pytest.raises(UserError) as error:
        cluster.check_versions(here, [dict(here), {**here, "tensorflow": "2.20.0"}])
    assert "tensorflow 2.21.0 here, 2.20.0 on a worker" in str(error.value)
    assert "numpy" not in str(error.value)


def test_an_address_must_be_host_and_port():
    with pytest.raises(UserError, match="write HOST:PORT"):
        cluster.check_reachable("somewhere")


def test_token_authentication_cannot_be_turned_off(monkeypatch):
    import os

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    for joining in (True, False):
        with pytest.raises(UserError, match="token authentication only"):
            cluster.require_token_auth(joining=joining)
    monkeypatch.delenv("RAY_AUTH_MODE")
    cluster.require_token_auth(joining=False)  # a local Ray: Ray's own default turns it on, with a new token
    assert "RAY_AUTH_MODE" not in os.environ
    cluster.require_token_auth(joining=True)
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_a_run_comes_back_as_files_written_whole_and_is_finished_only_with_its_key(tmp_path):
    files = {
        "models/baseline/seed-3/run.json": json.dumps({"run_key": "k1"}).encode(),
        "models/baseline/seed-3/history.csv": b"step,loss\n0,2.3\n",
        "plots/baseline/seed-3/confusion.csv": b"actual,predicted\n",
        "metrics/baseline/seed-3.json": b"{}",
    }
    assert not driver.is_finished(tmp_path, "baseline", 3, "k1")
    driver.write_files(tmp_path, "baseline", 3, files)
    for name, content in files.items():
        assert (tmp_path / name).read_bytes() == content
    assert driver.is_finished(tmp_path, "baseline", 3, "k1")
    assert not driver.is_finished(tmp_path, "baseline", 3, "k2")  # other settings: run again
    assert not list(tmp_path.rglob(".*partial*"))


def test_the_grid_id_is_its_resolved_folder(tmp_path):
    assert ledger.grid_id(tmp_path / "a") == ledger.grid_id(tmp_path / "x" / ".." / "a")
    assert ledger.grid_id(tmp_path / "a") != ledger.grid_id(tmp_path / "b")
