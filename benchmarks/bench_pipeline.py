"""Pipeline overhead: where the time of a full `dvc repro` goes, against the training it runs.

Runs `dvc repro --force` of the default pipeline in this workspace (every stage, from fetch), then a
`dvc repro` with nothing to do, and reads what the stages recorded: training, validation and tracing
seconds (models/*/seed-*/run.json), inference seconds (metrics/*/seed-*.json), and the stage
worker's log (each stage's time in its process and peak resident memory). Prints a table and writes
reports/pipeline_benchmark.json. Not a test: it prints figures. `make bench-pipeline` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from pipeline.runtime.worker import stop_workers

CHILD_LINE = re.compile(r"child \d+: pipeline\.stages\.(\w+) exit (\d+) after ([\d.]+)s, peak RSS ([\d,]+) MB")


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def work_seconds(root: Path) -> dict[str, float]:
    """Seconds the stages spent on their own work, as they recorded it."""
    work = {"training": 0.0, "validation": 0.0, "tracing": 0.0, "inference": 0.0}
    for path in root.glob("models/*/seed-*/run.json"):
        run = json.loads(path.read_text())
        work["training"] += run["train_seconds"]
        work["validation"] += run["validation_seconds"] or 0.0
        work["tracing"] += run["trace_seconds"] or 0.0
    for path in root.glob("metrics/*/seed-*.json"):
        metrics = json.loads(path.read_text())
        work["inference"] += metrics["test_examples"] / metrics["inference_images_per_second"]
    return work


def stage_processes(log: str) -> dict[str, dict[str, float]]:
    """Per stage: how many ran, their seconds inside the worker's children, and the peak RSS."""
    stages: dict[str, dict[str, float]] = {}
    for stage, _, seconds, peak in CHILD_LINE.findall(log):
        entry = stages.setdefault(stage, {"count": 0, "seconds": 0.0, "peak_rss_mb": 0.0})
        entry["count"] += 1
        entry["seconds"] += float(seconds)
        entry["peak_rss_mb"] = max(entry["peak_rss_mb"], float(peak.replace(",", "")))
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("reports/pipeline_benchmark.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pipeline-worker-") as workers:
        env = {**os.environ, "PIPELINE_WORKER_DIR": workers}
        print("dvc repro --force (every stage) ...", flush=True)
        full = timed(["dvc", "repro", "--force"], env)
        noop = min(timed(["dvc", "repro"], env) for _ in range(3))
        log = "".join(p.read_text() for p in Path(workers).glob("*.log"))
        stop_workers(Path(workers))  # it would idle on for a while
    work = work_seconds(Path.cwd())
    stages = stage_processes(log)
    total_work = sum(work.values())
    in_stages = sum(s["seconds"] for s in stages.values())
    result = {
        "repro_seconds": full,
        "noop_repro_seconds": noop,
        "work_seconds": work,
        "ratio_to_work": full / total_work,
        "stage_process_seconds": in_stages,
        "outside_stage_processes_seconds": full - in_stages,
        "stages": stages,
    }
    print(f"dvc repro --force: {full:.1f}s; no-op dvc repro: {noop:.2f}s (best of 3)")
    print(
        "work inside it: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in work.items())
        + f"; sum {total_work:.1f}s -> wall time / work = {full / total_work:.2f}x"
    )
    print(f"{'stage':>10} {'runs':>5} {'s in process':>13} {'mean s':>7} {'peak RSS MB':>12}")
    for name, s in stages.items():
        print(
            f"{name:>10} {s['count']:>5.0f} {s['seconds']:>13.1f} {s['seconds'] / s['count']:>7.2f}"
            f" {s['peak_rss_mb']:>12,.0f}"
        )
    print(f"outside the stage processes (DVC, launcher, worker start-up): {full - in_stages:.1f}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
