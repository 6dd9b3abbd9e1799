"""How params.yaml is checked, whatever the section: the strict pydantic base of its models, the
file read with a safe YAML loader, and pydantic's errors as messages that name the key, with a
"did you mean" and the allowed keys. It knows no section: pipeline.config and pipeline.data_config
hold the models, so a stage that reads only `data` does not import the layer vocabulary."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import ConfigError

PositiveInt = Annotated[int, Field(gt=0)]

Loc = tuple[Any, ...]  # where pydantic found an error: keys and list indices from the top of the file


class Strict(BaseModel):
    """Base for every config model: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def read_yaml(path: str | Path) -> Any:
    """The YAML data of a params file, read with a safe loader (no Python objects)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: run from the project root, or pass --params") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None


def check_sections(raw: Any, source: str) -> dict:
    """The file's data, which must be a mapping of sections."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a mapping of sections (data, train, evaluate, variants)")
    return raw


def key_path(loc: Loc, skip: Collection[str] = ()) -> str:
    """The key as users write it (`train.steps`, `variants.v.layers[0].filters`), leaving out the
    names in `skip` (pydantic's discriminator tags, not keys the user wrote)."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part in skip:
            continue
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts)


def section_keys(root: type[BaseModel], loc: Loc) -> list[str]:
    """Keys allowed where the last element of loc sits, at the top of the file or in one of its
    sections; [] deeper down."""
    parent = loc[:-1]
    if len(parent) == 1 and parent[0] in root.model_fields:
        annotation = root.model_fields[parent[0]].annotation
        return list(getattr(annotation, "model_fields", {}))
    if not parent:
        return list(root.model_fields)
    return []


def format_validation_error(
    exc: ValidationError,
    source: str,
    *,
    key: Callable[[Loc], str] = key_path,
    allowed_for: Callable[[Loc], list[str]],
    special: Callable[[dict, Loc], str | None] | None = None,
) -> str:
    """One line per error: `special` words the errors it knows (None for the others), an unknown key
    gets a "did you mean" and the keys `allowed_for` gives, any other error pydantic's message and
    the value given."""
    lines = [f"{source} is invalid:"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        msg = special(err, loc) if special is not None else None
        if msg is None:
            where = key(loc) or "(top level)"
            if err["type"] == "extra_forbidden":
                msg = _unknown_key(where, loc[-1], allowed_for(loc))
            else:
                value = err.get("input")
                shown = "" if isinstance(value, dict) else f" (got {value!r})"
                msg = f"  - {where}: {err['msg']}{shown}"
        lines.append(msg)
    return "\n".join(lines)


def _unknown_key(where: str, name: Any, allowed: list[str]) -> str:
    hint = difflib.get_close_matches(str(name), allowed, n=1)
    msg = f"  - {where}: unknown key"
    if hint:
        msg += f" (did you mean {hint[0]!r}?)"
    if allowed:
        msg += f"; allowed: {', '.join(allowed)}"
    return msg
