"""Thin command-line entry points, one per DVC stage."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from pipeline.errors import UserError


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_stage(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a stage's main; turn user errors, Ctrl-C and SIGTERM into a message and a non-zero exit."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted: no stage outputs were written", file=sys.stderr)
        raise SystemExit(130) from None
