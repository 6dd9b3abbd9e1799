"""Thin command-line entry points, one per DVC stage."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline.errors import UserError


def run_stage(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a stage's main; turn user errors and Ctrl-C into a message and a non-zero exit."""
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted: no outputs were written", file=sys.stderr)
        raise SystemExit(130) from None
