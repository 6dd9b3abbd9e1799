"""Pipeline overhead: what a `dvc repro` costs beyond the training it runs. Not a test: it prints figures.

Each measurement runs in a fresh clone of this repository's HEAD (what a user gets), with Fashion-MNIST
from a local mirror (Debian's dataset-fashion-mnist by default), after `dvc repro prepare`:

1. **Bookkeeping per run** (`--seeds 2 5 10 20`): params.yaml's variants with `train.steps=10`, so
   training is negligible; the wall time of `dvc repro` (every train@<variant> stage and compare)
   divided by the number of runs (variant x seed), and of it the runs' own recorded work (training,
   tracing, validation, testing: `work_seconds`), below which no design's time per run can go. Then
   the best of three no-op `dvc repro`.
2. **Against the plain script** (`--plain`): the default protocol (params.yaml as shipped: every
   variant, its seeds, 1001 steps) as `dvc repro` (with fetch and prepare, timed apart, that is
   the whole of `make run` on a set-up clone), against `benchmarks/plain_keras.py` on the same
   prepared data, run as a user would write it (import once; per variant and seed: build, `fit` with
   steps_per_execution, evaluate on the test set), with Keras' default steps_per_execution (1) and
   tuned (`--steps-per-execution`, default 100: the best of 1/32/100 in docs/benchmark-peer.md), and
   tuned and validating as the pipeline does (`plain_keras --validate`), a fairer peer; what
   validating alone costs the script (validating / tuned) is as low as a validating pipeline's
   ratio to the tuned script can go.

Peak memory per stage: the highest `peak_memory_mb` any run.json recorded. Writes
reports/pipeline_benchmark.json. `make bench-pipeline` runs all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MIRROR = "/usr/share/datasets/fashion-mnist"


def sh(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run a command (its output kept out of the way), fail loudly. Its wall seconds and its CPU
    seconds (user + system, all its processes): on a shared machine the CPU seconds move less."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed in {cwd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def clone(into: Path, mirror: str, **train: object) -> tuple[dict, float]:
    """A fresh clone of HEAD at `into`, on Fashion-MNIST from `mirror`, with these train.* settings;
    fetched and prepared (`dvc repro prepare`, timed apart). Returns its params and those seconds."""
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(into)], check=True)
    params = yaml.safe_load((into / "params.yaml").read_text())
    params["data"].update(dataset="fashion_mnist", mirrors=[mirror])
    params["train"].update(train)
    (into / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params, sh(["dvc", "repro", "prepare"], into, environment())[0]


def environment() -> dict[str, str]:
    """This virtualenv first on PATH (as `make run` does), a store of the clone's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return {
        **env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def peak_memory_mb(project: Path) -> float:
    return max(json.loads(p.read_text())["peak_memory_mb"] for p in project.glob("models/*/seed-*/run.json"))


def work_seconds(project: Path) -> float:
    """Training, tracing and validation seconds the runs recorded, plus their test-set inference."""
    total = 0.0
    for path in project.glob("models/*/seed-*/run.json"):
        run = json.loads(path.read_text())
        total += run["train_seconds"] + (run["trace_seconds"] or 0.0) + (run["validation_seconds"] or 0.0)
    for path in project.glob("metrics/*/seed-*.json"):
        metrics = json.loads(path.read_text())
        total += metrics["test_examples"] / metrics["inference_images_per_second"]
    return total


def bookkeeping(seeds: int, scratch: Path, mirror: str) -> dict:
    project = scratch / f"seeds-{seeds}"
    params, _ = clone(project, mirror, steps=10, seeds=list(range(1, seeds + 1)))
    runs = len(params["variants"]) * seeds
    wall, cpu = sh(["dvc", "repro"], project, environment())
    noop = min(sh(["dvc", "repro"], project, environment())[0] for _ in range(3))
    work = work_seconds(project)
    return {
        "seeds": seeds,
        "variants": len(params["variants"]),
        "runs": runs,
        "repro_seconds": wall,
        "seconds_per_run": wall / runs,
        "repro_cpu_seconds": cpu,
        "cpu_seconds_per_run": cpu / runs,
        "work_seconds": work,
        # the runs' own computing per run: no design's wall time per run goes below it
        "work_seconds_per_run": work / runs,
        "bookkeeping_seconds_per_run": (wall - work) / runs,
        "noop_repro_seconds": noop,
        "peak_memory_mb": peak_memory_mb(project),
    }


def against_plain(scratch: Path, mirror: str, steps_per_execution: int) -> dict:
    project = scratch / "default"
    params, fetch_prepare = clone(project, mirror)
    pipeline, pipeline_cpu = sh(["dvc", "repro"], project, environment())
    data = project / "data" / "prepared" / "fashion_mnist"
    plain, plain_cpu = {}, {}
    command = [sys.executable, "-m", "benchmarks.plain_keras", "--data", str(data), "--params", "params.yaml"]
    env = {**environment(), "PYTHONPATH": str(ROOT)}
    for spe in (1, steps_per_execution):
        plain[spe], plain_cpu[spe] = sh([*command, "--steps-per-execution", str(spe)], project, env)
    # the same, tuned, validating as the pipeline does (11 times on the validation split)
    validating, validating_cpu = sh(
        [*command, "--steps-per-execution", str(steps_per_execution), "--validate"], project, env
    )
    return {
        "runs": len(params["variants"]) * len(params["train"]["seeds"]),
        "fetch_prepare_seconds": fetch_prepare,
        # what `make run` costs on a clone whose .venv is set up: fetch and prepare, then the rest
        "make_run_seconds": fetch_prepare + pipeline,
        "pipeline_seconds": pipeline,
        "plain_seconds": {str(k): v for k, v in plain.items()},
        "ratio_vs_default_plain": pipeline / plain[1],
        "ratio_vs_tuned_plain": pipeline / plain[steps_per_execution],
        "plain_validating_seconds": validating,
        "ratio_vs_tuned_validating_plain": pipeline / validating,
        # what validating alone costs the plain script: no pipeline that validates goes below it
        "validating_plain_vs_tuned_plain": validating / plain[steps_per_execution],
        "pipeline_cpu_seconds": pipeline_cpu,
        "plain_cpu_seconds": {str(k): v for k, v in plain_cpu.items()},
        "cpu_ratio_vs_default_plain": pipeline_cpu / plain_cpu[1],
        "cpu_ratio_vs_tuned_plain": pipeline_cpu / plain_cpu[steps_per_execution],
        "cpu_ratio_vs_tuned_validating_plain": pipeline_cpu / validating_cpu,
        "peak_memory_mb": peak_memory_mb(project),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[2, 5, 10, 20])
    parser.add_argument("--plain", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--steps-per-execution", type=int, default=100)
    parser.add_argument("--mirror", default=MIRROR, help=f"a folder with Fashion-MNIST's four files (default {MIRROR})")
    parser.add_argument("--out", type=Path, default=Path("reports/pipeline_benchmark.json"))
    args = parser.parse_args()
    if not Path(args.mirror, "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(
            f"error: no Fashion-MNIST in {args.mirror}: apt-get install dataset-fashion-mnist, or --mirror"
        )

    result: dict = {
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    }
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as scratch:
        result["bookkeeping"] = []
        for seeds in args.seeds:
            print(f"train.steps=10, {seeds} seeds: dvc repro ...", flush=True)
            row = bookkeeping(seeds, Path(scratch), args.mirror)
            result["bookkeeping"].append(row)
            print(
                f"  {row['runs']} runs in {row['repro_seconds']:.1f}s: {row['seconds_per_run']:.2f}s per run"
                f" (CPU {row['cpu_seconds_per_run']:.2f}s per run); of which the runs' own work"
                f" {row['work_seconds_per_run']:.2f}s per run (no design goes below it), the rest"
                f" {row['bookkeeping_seconds_per_run']:.2f}s;"
                f" no-op dvc repro {row['noop_repro_seconds']:.2f}s;"
                f" peak memory per stage {row['peak_memory_mb']:,.0f} MB",
                flush=True,
            )
        if args.plain:
            print("default protocol: dvc repro, then the plain Keras script ...", flush=True)
            row = against_plain(Path(scratch), args.mirror, args.steps_per_execution)
            result["against_plain"] = row
            plain = row["plain_seconds"]
            print(
                f"  {row['runs']} runs: pipeline {row['pipeline_seconds']:.1f}s; plain script {plain['1']:.1f}s"
                f" (steps_per_execution 1), {plain[str(args.steps_per_execution)]:.1f}s"
                f" ({args.steps_per_execution}); pipeline / plain {row['ratio_vs_default_plain']:.2f}x and"
                f" {row['ratio_vs_tuned_plain']:.2f}x (CPU seconds {row['cpu_ratio_vs_default_plain']:.2f}x and"
                f" {row['cpu_ratio_vs_tuned_plain']:.2f}x); peak memory per stage {row['peak_memory_mb']:,.0f} MB",
                flush=True,
            )
            print(
                f"  plain script tuned and validating as the pipeline does: {row['plain_validating_seconds']:.1f}s;"
                f" pipeline / it {row['ratio_vs_tuned_validating_plain']:.2f}x"
                f" (CPU seconds {row['cpu_ratio_vs_tuned_validating_plain']:.2f}x); validating alone takes the"
                f" script {row['validating_plain_vs_tuned_plain']:.2f}x its tuned time, so no pipeline that"
                " validates goes below that ratio",
                flush=True,
            )
            print(
                f"  the whole default `dvc repro` (what `make run` does once .venv is set up): fetch and prepare"
                f" {row['fetch_prepare_seconds']:.1f}s + {row['pipeline_seconds']:.1f}s ="
                f" {row['make_run_seconds'] / 60:.1f} min",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
