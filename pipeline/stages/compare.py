"""DVC stage compare: one table of every variant x seed run, a per-variant summary with paired tests,
figures, each variant's best seed registered as its champion, and an MLflow summary run (in the
reports experiment) that points at the runs it summarizes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline import artifacts, models, paths, prepared, registry, reporting, tracking
from pipeline.config import load_params
from pipeline.record import RunRecord
from pipeline.runtime.stage import run_stage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The stage's arguments; run_stage parses them first, so `--help` and a usage error answer at once."""
    parser = argparse.ArgumentParser(prog="python -m pipeline compare", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--models", type=Path, default=paths.MODELS)
    parser.add_argument("--metrics", type=Path, default=paths.METRICS)
    parser.add_argument("--plots", type=Path, default=paths.PLOTS)
    parser.add_argument("--data", type=Path, required=True, help="data/prepared/<dataset>")
    parser.add_argument("--out", type=Path, default=paths.REPORTS)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    seeds = params.train.seeds
    outputs = [
        artifacts.read_run_outputs(variant, seed, args.models, args.metrics, args.plots)
        for variant in params.variants
        for seed in seeds
    ]
    runs = [RunRecord.from_json(output.record) for output in outputs]
    # feature maps of each variant's champion: the run the registry's @champion alias points at
    champions = {}
    for variant, spec in params.variants.items():
        if not models.upsampling_layer_names(spec):
            continue
        best = registry.champion([run for run in runs if run.variant == variant])
        if best is None:
            print(f"{variant}: no feature maps, no run has a finite validation accuracy", file=sys.stderr)
            continue
        seed = best.seed
        champions[variant] = (seed, artifacts.load_model(paths.model_dir(variant, seed, args.models)))
    report = reporting.build_report(outputs, prepared.load(args.data), params, champions)
    artifacts.write_report(args.out, report)
    reports = tracking.connect(reports=True)  # the registry needs only the store
    for variant, line in registry.register_champions(runs, params).items():
        print(f"{registry.registered_name(variant)}@{registry.CHAMPION}: {line}", file=sys.stderr)
    registry.log_summary_run(reports, params, report.metrics, args.out, list(report.runs["run_id"]))
    print(report.markdown, file=sys.stderr)


if __name__ == "__main__":
    run_stage(main, parse_args)
