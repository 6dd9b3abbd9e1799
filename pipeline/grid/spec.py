"""What a grid runs: its params (params.yaml plus `--set` values, in `dvc exp run -S`'s grammar), its
variants and its seeds, parsed with messages that say what to write instead. No Ray, no TensorFlow."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from pipeline.config import Params, load_params, parse_params
from pipeline.errors import ConfigError

_RANGE = re.compile(r"^\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?$")


def parse_seeds(text: str) -> list[int]:
    """`1-30`, `1,2,5-7` or `3`: the seeds in order, each once."""
    seeds: list[int] = []
    for part in text.split(","):
        match = _RANGE.match(part)
        if not match:
            raise ConfigError(f"--seeds {text!r}: {part.strip()!r} is not a seed or a range; write 1-30 or 1,2,5-7")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise ConfigError(f"--seeds {text!r}: the range {part.strip()} runs backwards; write {last}-{first}")
        seeds += [seed for seed in range(first, last + 1) if seed not in seeds]
    return seeds


def apply_settings(params_path: Path, settings: Sequence[str]) -> Params:
    """params.yaml with `settings` applied as `dvc exp run -S` applies them (Hydra's override
    grammar, DVC's own code): `train.steps=2000`, `+variants.NAME={...}`, `~variants.NAME`."""
    base = load_params(params_path)  # a bad params.yaml is named as such, before any setting
    if not settings:
        return base
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory(prefix="grid-params-") as scratch:
        copy = Path(scratch) / "params.yaml"
        shutil.copyfile(params_path, copy)
        try:
            apply_overrides(copy, list(settings))
        except InvalidArgumentError as exc:
            cause = exc.__cause__
            detail = str(cause).strip().splitlines()[0] if cause else str(exc)
            detail = _unknown_key(yaml.safe_load(params_path.read_text()), settings) or detail
            raise ConfigError(
                f"--set {' '.join(settings)}: {detail}; write KEY=VALUE as for `dvc exp run -S`"
                " (e.g. --set train.steps=2000, +variants.NAME={...} to add, ~variants.NAME to remove)"
            ) from None
        raw = yaml.safe_load(copy.read_text())
    return parse_params(raw, f"{params_path} with --set {' '.join(settings)}")


def _unknown_key(raw: object, settings: Sequence[str]) -> str | None:
    """For a `KEY=VALUE` whose KEY is not in params.yaml: which part is unknown, with a hint."""
    import difflib

    for setting in settings:
        key, sep, _ = setting.partition("=")
        if not sep or key.startswith(("+", "~")):
            continue
        node, path = raw, []
        for part in key.split("."):
            if not isinstance(node, dict):
                break
            if part not in node:
                hint = difflib.get_close_matches(part, [str(k) for k in node], n=1)
                where = ".".join([*path, part])
                return (
                    f"{where}: unknown key"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + " (+KEY=VALUE adds one)"
                )
            node, path = node[part], [*path, part]
    return None


def select_variants(params: Params, text: str | None, source: str = "params.yaml") -> list[str]:
    """`--variants a,b`: each checked (with a "did you mean"); None or empty: every variant of params."""
    if not text:
        return list(params.variants)
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        params.variant(name, source=source)
    return list(dict.fromkeys(names))
