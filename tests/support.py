"""Shared test helpers: where the project is, whatever the working directory."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the project root (tests/..)
SHARED = ROOT.parent / "shared"  # the team's shared folder beside the checkout (real MNIST files)
