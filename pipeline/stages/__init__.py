"""Thin command-line entry points, one per DVC stage."""

from pipeline.runtime.stage import run_stage  # noqa: F401  (re-exported until the stages import it from there)
