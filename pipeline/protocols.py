"""The protocols behind the published results: each a named set of `dvc exp run -S` settings on top of
params.yaml, the variants it runs and on which seeds, and the one Holm family of comparisons its
verdict may cite, stated here before the runs that settle it. Also the commands that run a protocol:
as a DVC experiment (how the first ten seeds were made) or as a grid (`make results`).

Variants kept or added for one protocol only are settings too (`~variants.NAME`,
`+variants.NAME={...}`), so params.yaml stays the one list of variants.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline.errors import DataError

if TYPE_CHECKING:
    from pipeline.config import Params

SEEDS = "train.seeds=[1,2,3,4,5,6,7,8,9,10]"
FASHION_MNIST = ("data.dataset=fashion_mnist", "data.mirrors=[/usr/share/datasets/fashion-mnist]")
# scripts/mnist_digits.py with its defaults (seed 0) writes these four files, byte for byte
DIGITS_SHA256 = {
    "train-images-idx3-ubyte.gz": "cd3bdce608aa2355015672e8684c798e67b58458810e89c3ddc92f53ca4e180a",
    "train-labels-idx1-ubyte.gz": "55fde0c5cfa88cb294b276cd315d30d8cd8fd8a52fde39a9d1bbedba88050f20",
    "t10k-images-idx3-ubyte.gz": "e33cd041f9b4f4129296d0965e9045333be92603160a908c814d10716cebb91d",
    "t10k-labels-idx1-ubyte.gz": "a2314c7e910f1ad8eb7577d2fbab18ec7077a881b55c860affab49a18cbb04c9",
}
MNIST_DIGITS = (
    "data.dataset=mnist_t10k_split",
    "data.mirrors=[data/mnist-digits-source]",
    "++data.sha256={" + ", ".join(f"{name}: {digest}" for name, digest in DIGITS_SHA256.items()) + "}",
    "data.validation_size=1000",
)
DIGITS_SETUP = ("python", "scripts/mnist_digits.py", "--out", "data/mnist-digits-source")
# the tutorial's training, spelled out so that a change of params.yaml's defaults cannot change a protocol
TUTORIAL = (
    "train.optimizer=sgd",
    "train.learning_rate=0.05",
    "train.batch_size=16",
    "train.steps=1001",
    "train.validation_every=100",
    "train.initializer=tutorial",
    "train.early_stopping_patience=null",
)
CONVERGE = (
    "train.optimizer=adam",
    "train.learning_rate=0.001",
    "train.batch_size=64",
    # up to 15 epochs of the 55,000 training images at batch 64 (860 steps each); 8, the earlier cap,
    # stopped baseline while its validation accuracy still rose (0.9024 -> 0.9054 in its last epoch)
    "train.steps=12900",
    "train.validation_every=860",
    "train.early_stopping_patience=2",
    "train.initializer=keras",
)
DIGITS_VARIANTS = ("baseline", "transposed", "transposed_bias0", "upsample_only", "baseline_wide", "resize_conv")
# the bias-1.0 hypothesis tried on every variant that dies: as transposed_bias0 does for transposed,
# bias_init 0.0 on every convolution after the first (the tutorial's 1.0 stays on the dense layers)
RESCUES: dict[str, tuple[str, Mapping[int, Mapping[str, Any]]]] = {
    f"{base}_bias0": (base, {n: {"bias_init": 0.0} for n in layers})
    for base, layers in (
        ("transposed_deep", (2, 3, 4)),
        ("transposed_k4", (2,)),
        ("resize_conv", (3,)),
        ("transposed_regularized", (2,)),
        ("baseline_wide", (2,)),
    )
}
DIGITS_RESCUES = {name: RESCUES[name] for name in ("resize_conv_bias0", "baseline_wide_bias0")}
# where the rescues run, the capacity control is baseline_wide_bias0: baseline_wide dies now and then
RESCUE_REFERENCES = ("baseline", "upsample_only", "baseline_wide_bias0")


MORE_SEEDS = tuple(range(11, 31))  # the seeds after the first ten, for the variants a verdict turns on


@dataclass(frozen=True)
class Comparison:
    """One test of a protocol's Holm family, on the seeds both sides ran:
    - "accuracy": `variant` - `reference` in test accuracy, paired by seed (sign-flip test);
    - "trained": the share of `variant`'s runs that trained against `reference`'s (Fisher's exact test);
    - "rescue": every variant with a `_bias0` twin against its twins, pooled (Fisher's exact test)."""

    kind: Literal["accuracy", "trained", "rescue"]
    variant: str = ""
    reference: str = ""

    def label(self) -> str:
        if self.kind == "rescue":
            return "trained: the `_bias0` twins against their variants, pooled"
        if self.kind == "trained":
            return f"trained: `{self.variant}` against `{self.reference}`"
        return f"`{self.variant}` - `{self.reference}`"


@dataclass(frozen=True)
class Protocol:
    """A named DVC experiment: its `-S` settings on top of params.yaml, which variants it keeps
    (None: all of params.yaml's), the variants it adds (name -> (base variant, {layer number counted
    from 1: {key: value}})), the command that makes its data first, the references its tables
    compare with, the variants that also run more seeds (`added_seeds`: MORE_SEEDS, or fewer where the
    compute did not fit), and its Holm family: every comparison its
    verdict may cite, Holm-adjusted together."""

    name: str
    title: str
    settings: tuple[str, ...]
    variants: tuple[str, ...] | None = None
    extra_variants: Mapping[str, tuple[str, Mapping[int, Mapping[str, Any]]]] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    references: tuple[str, ...] = ("baseline", "upsample_only", "baseline_wide")
    leave_out: tuple[str, ...] = ()  # variants removed from all of params.yaml's (with variants=None)
    # variants this protocol need not run because another is the same network here ({name: the other})
    same_as: Mapping[str, str] = field(default_factory=dict)
    more_seeds: tuple[str, ...] = ()
    added_seeds: tuple[int, ...] = MORE_SEEDS
    family: tuple[Comparison, ...] = ()


def _accuracy(*pairs: tuple[str, str]) -> tuple[Comparison, ...]:
    return tuple(Comparison("accuracy", variant, reference) for variant, reference in pairs)


# The families, stated before seeds 11-30 ran. Under the tutorial's protocol: does the tutorial's own
# variant die more often or score differently than the plain CNN; do biases of 0 rescue the variants
# that die; and with biases of 0, is learned upsampling better than the plain CNN, than fixed
# upsampling, than fixed upsampling followed by a learned convolution, and than the plain CNN of the
# same capacity; and do fixed upsampling and capacity alone beat the plain CNN.
TUTORIAL_FAMILY = (
    Comparison("trained", "transposed", "baseline"),
    *_accuracy(("transposed", "baseline")),
    Comparison("rescue"),
    *_accuracy(
        ("transposed_bias0", "baseline"),
        ("transposed_bias0", "upsample_only"),
        ("transposed_bias0", "resize_conv_bias0"),
        ("transposed_bias0", "baseline_wide_bias0"),
        ("upsample_only", "baseline"),
        ("baseline_wide_bias0", "baseline"),
    ),
)
# Trained to convergence (every bias starts at 0): the same questions of `transposed`, and whether a
# second learned layer after fixed upsampling, fixed upsampling and capacity alone beat the plain CNN.
CONVERGE_FAMILY = _accuracy(
    ("transposed", "baseline"),
    ("transposed", "upsample_only"),
    ("transposed", "resize_conv"),
    ("transposed", "baseline_wide"),
    ("resize_conv", "upsample_only"),
    ("upsample_only", "baseline"),
    ("baseline_wide", "baseline"),
)
TUTORIAL_MORE = ("baseline", "transposed_bias0", "upsample_only", "resize_conv_bias0", "baseline_wide_bias0")
CONVERGE_MORE = ("baseline", "transposed", "resize_conv", "baseline_wide", "upsample_only")
# pixel scaling: per dataset, every variant's share of trained runs with centred pixels against [0, 1]
# pixels (Fisher's exact test, on the seeds both protocols ran), Holm-adjusted over the variants
# {name: (dataset, centred protocol, [0, 1] protocol)}
SCALING = {
    "fashion": ("Fashion-MNIST", "tutorial-centered", "tutorial-unit"),
    "digits": ("MNIST digits", "digits-centered", "digits-unit"),
}


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            "tutorial-centered",
            "Fashion-MNIST, the tutorial's protocol, pixels centred",
            (*FASHION_MNIST, "data.scaling=centered", *TUTORIAL, SEEDS),
            extra_variants=RESCUES,
            references=RESCUE_REFERENCES,
            more_seeds=TUTORIAL_MORE,
            family=TUTORIAL_FAMILY,
        ),
        Protocol(
            "tutorial-unit",
            "Fashion-MNIST, the tutorial's protocol, pixels in [0, 1]",
            (*FASHION_MNIST, "data.scaling=unit", *TUTORIAL, SEEDS),
            extra_variants=RESCUES,
            references=RESCUE_REFERENCES,
            family=TUTORIAL_FAMILY,
        ),
        Protocol(
            "converge",
            "Fashion-MNIST, trained to convergence (Adam)",
            (*FASHION_MNIST, "data.scaling=centered", *CONVERGE, SEEDS),
            # Keras' initialiser already starts every bias at 0: transposed_bias0 would repeat transposed exactly
            leave_out=("transposed_bias0",),
            references=("baseline", "upsample_only", "baseline_wide", "resize_conv"),
            same_as={"transposed_bias0": "transposed", "baseline_wide_bias0": "baseline_wide"},
            more_seeds=CONVERGE_MORE,
            family=CONVERGE_FAMILY,
        ),
        Protocol(
            "digits-centered",
            "MNIST digits (8,000/2,000 split of t10k), the tutorial's protocol, pixels centred",
            (*MNIST_DIGITS, "data.scaling=centered", *TUTORIAL, SEEDS),
            variants=DIGITS_VARIANTS,
            extra_variants=DIGITS_RESCUES,
            references=RESCUE_REFERENCES,
            setup=DIGITS_SETUP,
            more_seeds=TUTORIAL_MORE,
            family=TUTORIAL_FAMILY,
        ),
        Protocol(
            "digits-unit",
            "MNIST digits (8,000/2,000 split of t10k), the tutorial's protocol, pixels in [0, 1]",
            (*MNIST_DIGITS, "data.scaling=unit", *TUTORIAL, SEEDS),
            variants=DIGITS_VARIANTS,
            extra_variants=DIGITS_RESCUES,
            references=RESCUE_REFERENCES,
            setup=DIGITS_SETUP,
            family=TUTORIAL_FAMILY,
        ),
    )
}


def hydra_value(value: Any) -> str:
    """A Python value in the override grammar of `dvc exp run -S` (Hydra's): dicts, lists, numbers,
    booleans, null, and strings quoted unless they are plain words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {hydra_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(hydra_value(item) for item in value) + "]"
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) and text.lower() not in ("null", "true", "false", "nan", "inf"):
        return text
    # a backslash escapes only a quote (or the closing quote): double the runs before one, then escape quotes
    text = re.sub(r"(\\+)(?='|$)", lambda run: run.group(1) * 2, text)
    return "'" + text.replace("'", "\\'") + "'"


def derived_variant(params: Params, base: str, changes: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """params.yaml's variant `base` with `changes` ({layer number from 1: {key: value}}) applied, as the
    dict a `+variants.NAME=` setting carries. The result is validated as a Variant."""
    from pipeline.config import Variant

    spec = params.variant(base)
    layers = [layer.model_dump(exclude_defaults=True) for layer in spec.layers]
    for number, keys in changes.items():
        if not 1 <= number <= len(layers):
            raise ValueError(f"variant {base!r} has {len(layers)} layers, no layer {number}")
        layers[number - 1] |= dict(keys)
    shown = "; ".join(f"layer {n}: {', '.join(f'{k} {v}' for k, v in keys.items())}" for n, keys in changes.items())
    derived = {"description": f"{base} with {shown}", "layers": layers}
    Variant.model_validate(derived)  # a bad change fails here, not in the middle of a run
    return derived


def experiment_settings(protocol: Protocol, params: Params) -> list[str]:
    """The protocol's `-S` values for params.yaml as it is: its settings, then the variants it removes
    and the ones it adds."""
    names = list(params.variants)
    keep = names if protocol.variants is None else [v for v in protocol.variants if v not in protocol.extra_variants]
    unknown = [name for name in [*keep, *protocol.leave_out] if name not in names]
    if unknown:
        raise DataError(f"protocol {protocol.name}: no variant {', '.join(unknown)} in params.yaml")
    removed = [name for name in names if name not in keep or name in protocol.leave_out]
    added = [
        f"+variants.{name}={hydra_value(derived_variant(params, base, changes))}"
        for name, (base, changes) in protocol.extra_variants.items()
    ]
    return [*protocol.settings, *(f"~variants.{name}" for name in removed), *added]


def experiment_command(protocol: Protocol, params: Params) -> list[str]:
    """`dvc exp run -n NAME -S ...` for the protocol: the same runs as a named DVC experiment in the
    workspace, one stage per variant: what made the CSVs that record no `threads`."""
    command = ["dvc", "exp", "run", "-n", protocol.name]
    for setting in experiment_settings(protocol, params):
        command += ["-S", setting]
    return command


GRIDS = Path("grids")  # each protocol's grid folder: grids/<protocol>/ (runs.csv, per-run files)
# a protocol's grid runs one single-thread run per core: more runs at once beat more threads per run
GRID_SETTINGS = ("++train.threads=1",)  # ++: set, or add to a params.yaml without the key


def grid_command(protocol: Protocol, params: Params) -> list[str]:
    """`python -m pipeline grid --out grids/NAME --set ...` for the protocol: every variant x seed
    of its params, on every core here (or on the cluster in RAY_ADDRESS)."""
    command = ["python", "-m", "pipeline", "grid", "--out", str(GRIDS / protocol.name)]
    for setting in [*experiment_settings(protocol, params), *GRID_SETTINGS]:
        command += ["--set", setting]
    return command


def setting(protocol: Protocol, key: str) -> str | None:
    """The value the protocol's `-S` settings give `key` (None: params.yaml's)."""
    values = [s.partition("=")[2] for s in protocol.settings if s.partition("=")[0] == key]
    return values[-1] if values else None


def more_seeds_out(protocol: Protocol) -> Path:
    return GRIDS / f"{protocol.name}-more"


def seed_range(seeds: Sequence[int]) -> str:
    """`11-30` for 11..30, `1,3` otherwise: the grid's --seeds grammar."""
    seeds = list(seeds)
    if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(str(seed) for seed in seeds)


def more_seeds_command(protocol: Protocol, params: Params) -> list[str]:
    """The grid of the protocol's added_seeds for its more_seeds variants, into grids/NAME-more."""
    if not protocol.more_seeds:
        raise DataError(f"protocol {protocol.name} runs no more seeds")
    grid = grid_command(protocol, params)
    return [
        *grid[:4],
        "--out",
        str(more_seeds_out(protocol)),
        "--variants",
        ",".join(protocol.more_seeds),
        "--seeds",
        seed_range(protocol.added_seeds),
        *grid[6:],
    ]


def shell_line(command: Sequence[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)
