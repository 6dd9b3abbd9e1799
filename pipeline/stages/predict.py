"""`python -m pipeline predict`: class predictions for image files from a trained model, as CSV on stdout.

Not a DVC stage: a command for using a model. MODEL is models:/deconvolution-<variant>@champion
(registered by the compare stage), runs:/<run_id>/<name>, an MLflow model folder, or a train output
folder models/<variant>/seed-<n>. Files: PNG/JPEG (one 28x28 image each), .npy arrays or IDX image
files. Output columns: source, index (within the file), predicted_class (0-9), probability.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from pipeline import prediction
from pipeline.runtime.stage import run_stage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The stage's arguments; run_stage parses them first, so `--help` and a usage error answer at once."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, metavar="MODEL", help="models:/..., runs:/... or a folder")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="PNG, JPEG, .npy or IDX image files")
    parser.add_argument("--batch-size", type=int, default=256, help="images per model call (default: 256)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def main(args: argparse.Namespace) -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr stays readable
    model = prediction.load_classifier(args.model)
    shape = tuple(model.input_shape[1:3])  # (height, width) of the images it takes
    images = [prediction.read_images(file, shape) for file in args.files]  # all checked before any output
    out = csv.writer(sys.stdout, lineterminator="\n")
    try:
        out.writerow(prediction.CSV_HEADER)
        for file, pixels in zip(args.files, images, strict=True):
            probabilities = prediction.predict_probabilities(model, pixels, args.batch_size)
            out.writerows(prediction.csv_rows(str(file), probabilities))
            print(f"{file}: {len(pixels)} image(s)", file=sys.stderr)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped early (`| head`): no traceback, as a process stopped by SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit must not fail
        raise SystemExit(141) from None


if __name__ == "__main__":
    run_stage(main, parse_args)
