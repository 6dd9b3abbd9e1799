"""Thin command-line entry points, one per DVC stage."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from pipeline.errors import UserError


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up chatter (oneDNN, CUDA probing) kept off the terminal.

    TF_CPP_MIN_LOG_LEVEL does not reach messages logged before absl is initialised, so stderr is
    pointed at /dev/null for the import alone; Python errors still propagate.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def run_stage(
    main: Callable[[list[str] | None], None], argv: list[str] | None = None, *, tensorflow: bool = True
) -> None:
    """Run a stage's main; turn user errors, Ctrl-C and SIGTERM into a message and a non-zero exit.

    This runs the stage in this process. DVC starts stages through `python -m pipeline <stage>`
    (pipeline/__main__.py), which hands them to the warm stage worker when one can be had.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    signal.signal(signal.SIGTERM, _terminate)
    # Ctrl-C must stop a stage even when it was started from a shell that ignores SIGINT (a
    # background job, some CI runners): Python keeps such an inherited SIG_IGN otherwise
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if tensorflow:
            _import_tensorflow_quietly()
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted: no stage outputs were written", file=sys.stderr)
        raise SystemExit(130) from None
