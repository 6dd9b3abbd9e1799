"""fetch_dataset and the fetch stage against a real HTTP server on 127.0.0.1 with injected faults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import support
import yaml
from idx_server import IdxServer, make_idx_dataset
from support import ROOT, clean_env

from pipeline import download
from pipeline.datasets import IDX_FILES, file_sha256, resolve_dataset
from pipeline.download import fetch_dataset
from pipeline.errors import ConfigError, FetchError

NAMES = list(IDX_FILES.values())
VARIANTS = {"baseline": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": None}]}}
# Loopback downloads of a few kB: a generous client timeout, so a busy machine never turns a good
# download into a timeout (and a retry the request counts would see).
TIMEOUT = 30.0
# The client timeout where a test meets the "stall" route. That route answers only when the server
# shuts down (STALL_FOREVER), so this timeout always fires there, however slow the machine; it is
# also the timeout of the good mirrors in those tests, hence not tiny.
STALL_TIMEOUT = 2.0
STALL_FOREVER = 24 * 3600.0


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(download, "RETRY_BACKOFF_S", 0.0)


@pytest.fixture
def source(tmp_path):
    return make_idx_dataset(tmp_path / "source")


@pytest.fixture
def dataset(source):
    return resolve_dataset("tiny", source["sha256"])


@pytest.fixture
def server(source):
    with IdxServer(source["directory"], stall_seconds=STALL_FOREVER) as srv:  # stalls until teardown
        yield srv


def fetch(dataset, mirrors, dest, **kwargs):
    kwargs.setdefault("timeout", TIMEOUT)
    kwargs.setdefault("retries", 1)
    return fetch_dataset(dataset, mirrors, dest, progress=False, **kwargs)


def assert_complete(dest: Path, source) -> None:
    assert sorted(p.name for p in dest.iterdir()) == sorted(NAMES)  # no staging debris
    for name in NAMES:
        assert file_sha256(dest / name) == source["sha256"][name]


def test_success_returns_verified_paths(server, dataset, source, tmp_path):
    dest = tmp_path / "raw"
    paths = fetch(dataset, [server.url("good")], dest)
    assert paths == {key: dest / name for key, name in IDX_FILES.items()}
    assert_complete(dest, source)
    assert server.count("good") == 4


# Requests one file costs on each fault route with retries=1: 404 and a bad checksum are not
# retried, a 500 and a truncated body are, a redirect loop is followed until requests gives up.
REQUESTS_PER_FILE = {"missing": 1, "error": 2, "truncated": 2, "corrupt": 1, "loop": 31}


@pytest.mark.parametrize("route", ["missing", "error", "truncated", "corrupt", "loop"])
def test_each_fault_falls_through_to_next_mirror(server, dataset, source, tmp_path, route):
    dest = tmp_path / "raw"
    fetch(dataset, [server.url(route), server.url("good")], dest, retries=1)
    assert_complete(dest, source)
    assert server.count("good") == 4
    assert server.count(route) == 4 * REQUESTS_PER_FILE[route]


def test_a_stalled_mirror_times_out_and_falls_through(server, dataset, source, tmp_path, capfd):
    dest = tmp_path / "raw"
    dest.mkdir()
    for name in NAMES[1:]:  # one file to fetch: each stall costs STALL_TIMEOUT seconds
        (dest / name).write_bytes((source["directory"] / name).read_bytes())
    fetch(dataset, [server.url("stall"), server.url("good")], dest, timeout=STALL_TIMEOUT, retries=0)
    assert_complete(dest, source)
    assert server.requests == {f"/stall/{NAMES[0]}": 1, f"/good/{NAMES[0]}": 1}
    assert f"failed from {server.url('stall')}: timed out after {STALL_TIMEOUT:g}s" in capfd.readouterr().err


def test_retries_server_errors_but_not_404(server, dataset, tmp_path):
    with pytest.raises(FetchError):
        fetch(dataset, [server.url("error"), server.url("missing")], tmp_path / "raw", retries=2)
    # The first file fails everywhere: 500 is tried 1 + 2 times, 404 only once.
    assert server.count("error") == 3
    assert server.count("missing") == 1


def test_all_mirrors_fail_lists_every_mirror_and_reason(server, dataset, source, tmp_path):
    mirrors = [server.url(r) for r in ("missing", "error", "stall", "truncated", "corrupt", "loop")]
    dest = tmp_path / "raw"
    with pytest.raises(FetchError) as info:
        fetch(dataset, mirrors, dest, timeout=STALL_TIMEOUT, retries=0)
    message = str(info.value)
    first = NAMES[0]
    for mirror, reason in zip(
        mirrors,
        [
            "HTTP 404",
            "HTTP 500",
            f"timed out after {STALL_TIMEOUT:g}s",
            "truncated",
            f"checksum mismatch: got {file_sha256_of_reversed(source, first)} expected {source['sha256'][first]}",
            "too many redirects",
        ],
        strict=True,
    ):
        assert f"{mirror}: {reason}" in message
    assert first in message and "data.mirrors" in message
    assert list(dest.iterdir()) == []  # nothing at the final name, no staging debris
    # the first file failed everywhere, once each (retries=0), and no other file was tried
    once = ("missing", "error", "stall", "truncated", "corrupt")
    assert {route: server.count(route) for route in once} == dict.fromkeys(once, 1)
    assert server.count("loop") == REQUESTS_PER_FILE["loop"]
    assert {path.rsplit("/", 1)[1] for path in server.requests} == {first}


def file_sha256_of_reversed(source, name: str) -> str:
    import hashlib

    return hashlib.sha256(bytes(reversed((source["directory"] / name).read_bytes()))).hexdigest()


def test_connection_refused_is_reported(dataset, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError, match="connection refused"):
        fetch(dataset, [f"http://127.0.0.1:{port}/mnist"], tmp_path / "raw", retries=0)


def test_existing_good_file_is_kept_and_bad_file_replaced(server, dataset, source, tmp_path):
    dest = tmp_path / "raw"
    dest.mkdir()
    good, bad = NAMES[0], NAMES[1]
    (dest / good).write_bytes((source["directory"] / good).read_bytes())
    (dest / bad).write_bytes(b"not the real file")
    before = (dest / good).stat().st_mtime_ns
    fetch(dataset, [server.url("good")], dest)
    assert_complete(dest, source)
    assert (dest / good).stat().st_mtime_ns == before
    assert server.requests[f"/good/{good}"] == 0
    assert server.requests[f"/good/{bad}"] == 1
    # A second run downloads nothing.
    fetch(dataset, [server.url("good")], dest)
    assert server.count("good") == 3


def test_failed_refetch_keeps_good_files(server, dataset, source, tmp_path):
    dest = tmp_path / "raw"
    fetch(dataset, [server.url("good")], dest)
    (dest / NAMES[2]).unlink()
    with pytest.raises(FetchError):
        fetch(dataset, [server.url("corrupt")], dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(set(NAMES) - {NAMES[2]})
    for name in set(NAMES) - {NAMES[2]}:
        assert file_sha256(dest / name) == source["sha256"][name]


def test_staging_debris_from_killed_run_is_removed(server, dataset, source, tmp_path):
    dest = tmp_path / "raw"
    (dest / ".partial").mkdir(parents=True)
    (dest / ".partial" / NAMES[0]).write_bytes(b"half a file")
    fetch(dataset, [server.url("good")], dest)
    assert_complete(dest, source)


def test_local_directory_and_file_url_mirrors(dataset, source, tmp_path, monkeypatch):
    fetch(dataset, [source["directory"].as_uri()], tmp_path / "a")
    assert_complete(tmp_path / "a", source)
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    fetch(dataset, ["empty", "source"], Path("b"))  # relative to the working directory
    assert_complete(tmp_path / "b", source)


def test_missing_file_in_local_mirror_is_reported(dataset, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FetchError, match=r"empty: file not found"):
        fetch(dataset, [str(empty)], tmp_path / "raw")


@pytest.mark.parametrize("mirror", ["ftp://example.org/mnist/", "s3://bucket/mnist/", "no/such/dir", "http://"])
def test_bad_mirrors_rejected_before_any_request(server, dataset, tmp_path, mirror):
    with pytest.raises(ConfigError) as info:
        fetch(dataset, [server.url("good"), mirror], tmp_path / "raw")
    assert repr(mirror) in str(info.value) and "data.mirrors" in str(info.value)
    assert sum(server.requests.values()) == 0
    assert not (tmp_path / "raw").exists()


def test_custom_dataset_needs_a_mirror(dataset, tmp_path):
    with pytest.raises(ConfigError, match="no default mirrors"):
        fetch(dataset, [], tmp_path / "raw")


# --- the stage as a user runs it -----------------------------------------------------------


def run_stage(params: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    return support.run(
        [
            sys.executable,
            "-m",
            "pipeline.stages.fetch",
            "--params",
            str(params_file),
            "--out",
            str(tmp_path / "raw"),
        ],
        cwd=tmp_path,
        env=clean_env(PYTHONPATH=str(ROOT)),
        timeout=120,
    )


def test_stage_fetches_from_local_server(server, source, tmp_path):
    data = {
        "dataset": "tiny",
        "sha256": source["sha256"],
        "mirrors": [server.url("good")],
        "timeout_seconds": TIMEOUT,
    }
    result = run_stage({"data": data, "variants": VARIANTS}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert_complete(tmp_path / "raw" / "tiny", source)
    assert "fetched tiny: 4 files verified" in result.stdout


def test_stage_bad_mirror_is_a_clean_error(source, tmp_path):
    data = {"dataset": "tiny", "sha256": source["sha256"], "mirrors": ["ftp://example.org/"]}
    result = run_stage({"data": data, "variants": VARIANTS}, tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: data.mirrors: 'ftp://example.org/'")
    assert "Traceback" not in result.stderr
