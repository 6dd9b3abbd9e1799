"""Real MNIST digits offline: a seeded split of the 10,000 canonical t10k images into 8,000 "training"
and 2,000 "test" images, written as the four IDX .gz files of a custom dataset (README, "Offline, or
with your own copy of the data"). Only the canonical test files are needed, and nothing else reads
this script: the pipeline takes its output through data.dataset, data.mirrors and data.sha256.

    python scripts/mnist_digits.py [--source ../shared/data/mnist] [--out data/mnist-digits-source] [--seed 0]

Reads t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from --source, checks them against the
MNIST pins of pipeline/datasets.py, writes train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz to --out (gzip with mtime 0, so the same seed
gives the same bytes and sha256 with this numpy and zlib) and prints the settings that run the
pipeline on them, with data.validation_size=1000 (7,000 images left to train on; the tutorial's
protocol sees 16,016). --out gets a .gitignore of its own, so the files stay out of git.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python scripts/mnist_digits.py` from anywhere
    sys.path.insert(0, str(ROOT))

from pipeline.datasets import DATASETS, IDX_FILES, PinnedFile, file_sha256, pin_mismatch  # noqa: E402
from pipeline.errors import DataError  # noqa: E402
from pipeline.idx import read_idx, write_idx  # noqa: E402

DATASET = "mnist_t10k_split"  # data.dataset: says what it is, never to be mistaken for full MNIST
SOURCE = Path("../shared/data/mnist")
OUT = Path("data/mnist-digits-source")
TEST_SIZE = 2_000
VALIDATION_SIZE = 1_000
SOURCE_FILES = (IDX_FILES["test_images"], IDX_FILES["test_labels"])


def mnist_pins() -> dict[str, PinnedFile]:
    """The canonical MNIST t10k files' pins, as pipeline/datasets.py registers them."""
    return {pin.name: pin for pin in DATASETS["mnist"].files if pin.name in SOURCE_FILES}


def split(images: np.ndarray, labels: np.ndarray, seed: int, test_size: int = TEST_SIZE) -> dict[str, np.ndarray]:
    """A seeded random split of (images, labels) into "train" (the rest) and "test" (test_size), keyed
    like IDX_FILES; each image keeps its label. No I/O."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if not 0 < test_size < len(images):
        raise ValueError(f"test_size must be between 0 and {len(images)}, got {test_size}")
    order = np.random.default_rng(seed).permutation(len(images))
    test, train = order[:test_size], order[test_size:]
    return {
        "train_images": images[train],
        "train_labels": labels[train],
        "test_images": images[test],
        "test_labels": labels[test],
    }


def build(
    source: Path, out: Path, seed: int = 0, test_size: int = TEST_SIZE, pins: dict[str, PinnedFile] | None = None
) -> dict[str, str]:
    """Check the t10k files in `source` against `pins` (default: MNIST's), write the split to `out`
    under the canonical names; returns {file name: sha256} of the four files written."""
    pins = mnist_pins() if pins is None else pins
    for name in SOURCE_FILES:
        path = Path(source) / name
        if not path.is_file():
            raise DataError(f"{path}: not found; --source must hold {' and '.join(SOURCE_FILES)}")
        if problem := pin_mismatch(path, pins[name]):  # the fetch stage's own check
            raise DataError(f"{path}: {problem}: not the canonical MNIST file")
    images = read_idx(Path(source) / IDX_FILES["test_images"])
    labels = read_idx(Path(source) / IDX_FILES["test_labels"])
    arrays = split(images, labels, seed, test_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("# written by scripts/mnist_digits.py: nothing here goes into git\n*\n")
    sha256 = {}
    for key, name in IDX_FILES.items():
        write_idx(out / name, arrays[key])
        sha256[name] = file_sha256(out / name)
    return sha256


def settings(out: Path, sha256: dict[str, str], dataset: str = DATASET) -> list[str]:
    """The `dvc exp run -S` values that run the pipeline on the split in `out` (an absolute path, so
    the setting works from any working directory)."""
    files = ", ".join(f"{name}: {digest}" for name, digest in sha256.items())
    return [
        f"data.dataset={dataset}",
        f"data.mirrors=[{Path(out).resolve()}]",
        # `++`: DVC (Hydra) refuses to set keys inside params.yaml's empty `sha256: {}` with a plain `=`
        f"++data.sha256={{{files}}}",
        f"data.validation_size={VALIDATION_SIZE}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/mnist_digits.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=SOURCE, help=f"folder with the t10k files (default: {SOURCE})")
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder for the four files (default: {OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default: 0)")
    args = parser.parse_args(argv)
    try:
        sha256 = build(args.source, args.out, args.seed)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = sum(len(read_idx(args.out / IDX_FILES[key])) for key in ("train_images", "test_images"))
    print(f"{DATASET}: {total - TEST_SIZE:,} training and {TEST_SIZE:,} test images (seed {args.seed}) in {args.out}")
    for name, digest in sha256.items():
        print(f"  {digest}  {name}")
    flags = " ".join(f"-S '{value}'" for value in settings(args.out, sha256))
    print(f"\nRun the pipeline on them:\n  dvc exp run {flags}")
    print("\nor set in params.yaml:\n  data:")
    print(f"    dataset: {DATASET}\n    mirrors: [{args.out.resolve()}]")
    print("    sha256:\n" + "".join(f"      {name}: {digest}\n" for name, digest in sha256.items()), end="")
    print(f"    validation_size: {VALIDATION_SIZE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
