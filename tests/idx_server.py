"""Test helpers: generated IDX datasets and a loopback HTTP mirror with injected faults."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from pipeline.datasets import IDX_FILES, file_sha256
from pipeline.idx import write_idx

# How the fault routes misbehave; GET /<route>/<file name>.
ROUTES = ("good", "missing", "error", "stall", "truncated", "corrupt", "loop")


def make_idx_dataset(directory: Path, *, n_train: int = 60, n_test: int = 20, size: int = 28) -> dict:
    """Write four small .gz IDX files with unique images; return {file name: sha256} and the arrays."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    n = n_train + n_test
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n) % 256  # rows differ even if the generator repeated itself
    images[:, 0, 1] = np.arange(n) // 256
    labels = (np.arange(n) % 10).astype(np.uint8)
    arrays = {
        "train_images": images[:n_train],
        "train_labels": labels[:n_train],
        "test_images": images[n_train:],
        "test_labels": labels[n_train:],
    }
    for key, name in IDX_FILES.items():
        write_idx(directory / name, arrays[key])
    return {
        "sha256": {name: file_sha256(directory / name) for name in IDX_FILES.values()},
        "arrays": arrays,
        "directory": directory,
    }


class IdxServer:
    """Serves the files of `directory` on 127.0.0.1 under /<route>/<name>, routes as in ROUTES."""

    def __init__(self, directory: Path, stall_seconds: float = 5.0) -> None:
        self.directory = directory
        self.stall_seconds = stall_seconds
        self.requests: Counter[str] = Counter()
        self._release = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with server._lock:
                    server.requests[self.path] += 1
                parts = self.path.strip("/").split("/")
                route, name = (parts + [""])[:2] if len(parts) <= 2 else ("", "")
                file = server.directory / name
                if route not in ROUTES or not name or not file.is_file() or route == "missing":
                    self.send_error(404)
                    return
                body = file.read_bytes()
                if route == "error":
                    self.send_error(500)
                elif route == "loop":
                    self.send_response(302)
                    self.send_header("Location", self.path)
                    self.end_headers()
                elif route == "stall":
                    server._release.wait(server.stall_seconds)
                    self._send(body)
                elif route == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                elif route == "corrupt":
                    self._send(bytes(reversed(body)))
                else:
                    self._send(body)

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)  # fails when the client gave up (a timeout under test)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/{route}/"

    def count(self, route: str) -> int:
        """Requests made under /<route>/."""
        return sum(n for path, n in self.requests.items() if path.startswith(f"/{route}/"))

    def __enter__(self) -> IdxServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
