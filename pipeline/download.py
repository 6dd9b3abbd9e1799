"""Download a dataset's files: mirrors tried in order, transient failures retried, every file
verified against its pins before it takes its final name.

HTTP(S) downloads go through pooch's HTTPDownloader; local directories and file:// URLs are copied.
Nothing here does I/O at import time; pooch and requests are imported when a download starts.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse
from urllib.request import url2pathname

from pipeline.datasets import IDX_FILES, Dataset, PinnedFile, pin_mismatch
from pipeline.errors import ConfigError, FetchError

_ACCEPTED = "an http:// or https:// base URL, a file:// URL of a directory, or a local directory path"

# Seconds to wait before retry n (1-based) of a transient failure; tests may lower it.
RETRY_BACKOFF_S = 0.5


@dataclass(frozen=True)
class _Mirror:
    """One entry of data.mirrors: an http(s) base URL or a local directory."""

    label: str  # as the user wrote it
    url: str | None = None  # http(s) base URL
    directory: Path | None = None  # local directory


def _parse_mirror(mirror: str) -> _Mirror:
    """A data.mirrors entry as a URL or an existing directory; a ConfigError naming what is accepted."""
    text = str(mirror).strip()
    if not text:
        raise ConfigError(f"data.mirrors: an empty mirror; each must be {_ACCEPTED}")
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        if not parsed.netloc:
            raise ConfigError(f"data.mirrors: {text!r} has no host; each mirror must be {_ACCEPTED}")
        return _Mirror(text, url=text if text.endswith("/") else text + "/")
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"data.mirrors: {text!r} names a remote host; use file:///absolute/path")
        directory = Path(url2pathname(unquote(parsed.path)))
    elif len(scheme) > 1:  # "ftp://", "s3://", ... (a one-letter scheme would be a Windows drive)
        raise ConfigError(f"data.mirrors: {text!r}: unsupported scheme {scheme!r}; each mirror must be {_ACCEPTED}")
    else:
        directory = Path(text).expanduser()
    directory = directory.resolve()
    if not directory.is_dir():
        raise ConfigError(
            f"data.mirrors: {text!r} is not an existing directory ({directory}); each mirror must be {_ACCEPTED}"
        )
    return _Mirror(text, directory=directory)


def _describe_http_error(exc: Exception, timeout: float) -> tuple[str, bool]:
    """A short reason for a failed HTTP download, and whether retrying may help."""
    import requests  # lazily: only needed when downloading

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        retry = status >= 500 or status in (408, 429)
        return f"HTTP {status}" + (f" {exc.response.reason}" if exc.response.reason else ""), retry
    if isinstance(exc, requests.TooManyRedirects):
        return "too many redirects", False
    if isinstance(exc, requests.Timeout):
        return f"timed out after {timeout:g}s", True
    text = str(exc)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError) or "IncompleteRead" in text:
        match = re.search(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)", text)
        if match:
            read, more = int(match[1]), int(match[2])
            return f"truncated: connection closed after {read} of {read + more} bytes", True
        return "truncated: connection closed before the whole file arrived", True
    if isinstance(exc, requests.ConnectionError):
        if "Read timed out" in text or "ReadTimeout" in text:
            return f"timed out after {timeout:g}s", True
        if "refused" in text.lower():
            return "connection refused", True
        if "resolve" in text.lower() or "Name or service not known" in text:
            return "could not resolve host", True
        return f"connection failed: {text}", True
    return f"{type(exc).__name__}: {exc}", False


def _download_http(url: str, target: Path, *, timeout: float, retries: int, progress: bool) -> tuple[str | None, int]:
    """Download url into target with pooch; (None, attempts) on success, (reason, attempts) on failure."""
    import pooch  # lazily: keeps import of this module light

    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=timeout)
    attempt = 0
    while True:
        attempt += 1
        try:
            downloader(url, str(target), None)
            return None, attempt
        except Exception as exc:  # noqa: BLE001 - classified below, never swallowed silently
            target.unlink(missing_ok=True)
            reason, retry = _describe_http_error(exc, timeout)
            if not retry or attempt > retries:
                if attempt > 1:
                    reason += f" (after {attempt} attempts)"
                return reason, attempt
            _say(f"  {reason}; retrying ({attempt}/{retries})")
            time.sleep(RETRY_BACKOFF_S * attempt)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fetch_dataset(
    dataset: Dataset,
    mirrors: Sequence[str],
    dest: Path,
    *,
    timeout: float = 60.0,
    retries: int = 2,
    progress: bool = True,
) -> dict[str, Path]:
    """Make dest hold the dataset's four files, each verified against its pins.

    Files already in place that verify are kept. Others are fetched from the mirrors in order
    into dest/.partial/, verified, then moved into place, so a failed or interrupted download
    never leaves a file at the final name and never replaces a good one. Returns the paths,
    keyed like IDX_FILES.
    """
    dest = Path(dest)
    parsed = [_parse_mirror(m) for m in (mirrors or dataset.mirrors)]  # validate all before any I/O
    staging = dest / ".partial"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)  # debris from an earlier killed run
    keys = {name: key for key, name in IDX_FILES.items()}
    paths: dict[str, Path] = {}
    try:
        for pinned in dataset.files:
            final = dest / pinned.name
            paths[keys.get(pinned.name, pinned.name)] = final
            if final.is_file():
                problem = pin_mismatch(final, pinned)
                if problem is None:
                    _say(f"{pinned.name}: already present, checksum verified")
                    continue
                _say(f"{pinned.name}: the file in place fails verification ({problem}); fetching again")
            if not parsed:
                raise ConfigError(
                    f"data.mirrors: dataset {dataset.name!r} has no default mirrors; list at least one "
                    f"under data.mirrors ({_ACCEPTED})"
                )
            staging.mkdir(exist_ok=True)
            _fetch_one(pinned, parsed, staging, final, timeout=timeout, retries=retries, progress=progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths


def _fetch_one(
    pinned: PinnedFile,
    mirrors: list[_Mirror],
    staging: Path,
    final: Path,
    *,
    timeout: float,
    retries: int,
    progress: bool,
) -> None:
    """One file from the mirrors in order, each copy staged and verified before it replaces `final`;
    a FetchError listing every mirror's failure when none delivers it."""
    failures: list[str] = []
    for mirror in mirrors:
        part = staging / pinned.name
        part.unlink(missing_ok=True)
        if mirror.url is not None:
            source = mirror.url + quote(pinned.name)
            _say(f"{pinned.name}: downloading {source}")
            reason, _ = _download_http(source, part, timeout=timeout, retries=retries, progress=progress)
        else:
            assert mirror.directory is not None
            source = str(mirror.directory / pinned.name)
            _say(f"{pinned.name}: copying {source}")
            reason = None
            try:
                shutil.copyfile(source, part)
            except FileNotFoundError:
                reason = "file not found"
            except OSError as exc:
                reason = f"cannot read: {exc.strerror or exc}"
        if reason is None:
            reason = pin_mismatch(part, pinned)
        if reason is None:
            size = part.stat().st_size
            os.replace(part, final)
            _say(f"{pinned.name}: ok, {size} bytes, checksum verified")
            return
        part.unlink(missing_ok=True)
        _say(f"{pinned.name}: failed from {mirror.label}: {reason}")
        failures.append(f"  - {mirror.label}: {reason}")
    raise FetchError(
        f"could not fetch {pinned.name}: every mirror failed:\n"
        + "\n".join(failures)
        + "\nCheck data.mirrors in params.yaml, or point it at a directory that holds the four files "
        f"({', '.join(IDX_FILES.values())})."
    )
