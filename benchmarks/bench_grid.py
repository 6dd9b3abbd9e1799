"""The grid's figures (`make bench-grid`). Not a test: it prints figures and writes
reports/grid_benchmark.json.

One sitting, side by side, on the tutorial's protocol on Fashion-MNIST (Debian's dataset-fashion-mnist),
`--variants` (default baseline, transposed, transposed_bias0, upsample_only) x `--seeds` (default 1-10):

1. **This machine**: today's serial path, the train stage once per variant in one process with
   `train.threads=2` (as TensorFlow's default gave on 2 cores), against the local grid, 2 workers of
   1 thread. Throughput ratio = serial wall / grid wall.
2. **Per-run cost** beyond the run's own recorded work (training, tracing, validation, testing), on warm
   workers (each worker process's first task left out): a task's seconds minus that work, median and
   90th percentile; and over the whole grid, (wall x workers - all the work) / runs.
3. **Two localhost nodes** (`ray start`, 1 CPU each) against one, the same grid through `--address`,
   both logging to one MLflow server on 127.0.0.1.
4. **`make results`**, extrapolated: each published protocol's recorded work (docs/results/*.csv)
   times what a second of work took the local grid in (1) and (2), per protocol and in all.

Ray binds its ports on every interface, so the whole benchmark runs in a network namespace holding
only loopback when `unshare --net` works here (root, or unprivileged user namespaces), and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' helpers start `ray start` nodes and MLflow servers by PID

MIRROR = "/usr/share/datasets/fashion-mnist"
VARIANTS = "baseline,transposed,transposed_bias0,upsample_only"


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return wall


def project(folder: Path) -> Path:
    """A scratch project: this checkout's pipeline/ and params.yaml."""
    folder.mkdir(parents=True)
    shutil.copytree(ROOT / "pipeline", folder / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    return folder


def work_seconds(record: dict) -> float:
    """A run's own recorded work: training, tracing, validation and testing."""
    test = record["test_examples"] / record["inference_images_per_second"]
    return record["train_seconds"] + record["trace_seconds"] + record["validation_seconds"] + test


def records(grid: Path) -> dict[tuple[str, int], dict]:
    out = {}
    for metrics in (grid / "metrics").glob("*/seed-*.json"):
        variant, seed = metrics.parent.name, int(metrics.stem.split("-")[1])
        run = json.loads((grid / "models" / variant / f"seed-{seed}" / "run.json").read_text())
        out[(variant, seed)] = {**run, **json.loads(metrics.read_text())}
    return out


def per_run_cost(grid: Path, wall: float, workers: int) -> dict:
    """Task seconds minus recorded work on warm workers; and the grid's whole overhead per run."""
    runs = records(grid)
    tasks = [json.loads(line) for line in (grid / "tasks.jsonl").read_text().splitlines()]
    tasks = [t for t in tasks if "run_id" in t]
    seen, warm, cold = set(), [], []
    for task in tasks:  # in the order they finished; a worker process's first task imports and traces
        key = (task["node"], task["pid"])
        cost = task["task_seconds"] - work_seconds(runs[(task["variant"], task["seed"])])
        (warm if key in seen else cold).append(cost)
        seen.add(key)
    work = sum(work_seconds(r) for r in runs.values())
    warm.sort()
    return {
        "warm_tasks": len(warm),
        "median_s": statistics.median(warm) if warm else None,
        "p90_s": warm[int(0.9 * (len(warm) - 1))] if warm else None,
        "cold_first_task_s": statistics.median(cold),
        "driver_write_s": statistics.median(t["write_seconds"] for t in tasks),
        "bytes_per_run": statistics.median(t["bytes"] for t in tasks),
        "whole_grid_per_run_s": (wall * workers - work) / len(runs),
        "work_s": work,
        "runs": len(runs),
    }


def extrapolate_results(seconds_per_work_second: float) -> dict:
    """Each published protocol's recorded work times the grid's wall per second of work."""
    from pipeline.results import read_results

    out = {}
    for csv in sorted((ROOT / "docs" / "results").glob("*.csv")):
        table = read_results(csv)
        work = float(table["train_seconds"].sum() + table["trace_seconds"].sum())
        out[csv.stem] = {"runs": len(table), "work_s": work, "predicted_min": work * seconds_per_work_second / 60}
    out["all"] = {"predicted_min": sum(p["predicted_min"] for p in out.values())}
    return out


def start_up() -> None:
    """Print the seconds a local Ray takes to start (2 CPUs) and to stop, and a local MLflow front
    over a new SQLite store to answer."""
    from pipeline.grid import cluster, front

    started = time.perf_counter()
    with cluster.connect(None, 2, 1):
        up = time.perf_counter() - started
        started = time.perf_counter()
    down = time.perf_counter() - started
    started = time.perf_counter()
    with front.sqlite_front(f"sqlite:///{Path('probe.db').resolve()}", Path("probe-art"), Path("probe.log")):
        served = time.perf_counter() - started
    print(up, down, served)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=VARIANTS)
    parser.add_argument("--seeds", default="1-10")
    parser.add_argument("--skip-cluster", action="store_true", help="leave out figure 3 (the two-node cluster)")
    args = parser.parse_args()
    if not Path(MIRROR).is_dir():
        raise SystemExit(f"error: no Fashion-MNIST at {MIRROR}: apt-get install dataset-fashion-mnist")

    from grid_cluster import LocalCluster, MlflowServer, env, netns_available, netns_command

    if os.environ.get("BENCH_GRID_NETNS") != "1" and netns_available():
        os.environ["BENCH_GRID_NETNS"] = "1"
        command = netns_command([sys.executable, "-m", "benchmarks.bench_grid", *sys.argv[1:]])
        raise SystemExit(subprocess.run(command, cwd=ROOT).returncode)
    isolated = os.environ.get("BENCH_GRID_NETNS") == "1"
    print(f"network: {'a namespace holding only loopback' if isolated else 'this machine (no unshare here)'}")

    from pipeline.grid.spec import apply_settings, parse_seeds
    from pipeline.protocols import FASHION_MNIST, TUTORIAL

    seeds = parse_seeds(args.seeds)
    variants = args.variants.split(",")
    settings = [*FASHION_MNIST, "data.scaling=centered", *TUTORIAL, f"train.seeds=[{','.join(map(str, seeds))}]"]
    folder = Path(tempfile.mkdtemp(prefix="bench-grid-"))
    environment = env(folder / "home")
    python = str(Path(sys.executable))
    grid_settings = [*settings, "train.threads=1"]
    grid_args = ["--variants", args.variants, "--no-progress", *(x for s in grid_settings for x in ("--set", s))]
    figures: dict = {"variants": variants, "seeds": seeds, "network_namespace": isolated}

    # 1 and 2: serial (train stage, 2 threads) against the local grid (2 workers x 1 thread)
    here = project(folder / "local")
    timed([python, "-m", "pipeline", "grid", "--out", "warm-up", "--seeds", "1", *grid_args], here, environment)
    (prepared,) = (here / "data" / "grid").iterdir()
    serial_params = apply_settings(here / "params.yaml", [*settings, "train.threads=2"])
    (here / "serial.yaml").write_text(yaml.safe_dump(serial_params.model_dump(mode="json"), sort_keys=False))
    serial = 0.0
    for variant in variants:
        stage = [python, "-m", "pipeline", "train", "--variant", variant, "--data", str(prepared)]
        stage += ["--params", "serial.yaml", "--models", "s/models", "--metrics", "s/metrics", "--plots", "s/plots"]
        serial += timed(stage, here, environment)
    local = timed([python, "-m", "pipeline", "grid", "--out", "g", "--workers", "2", *grid_args], here, environment)
    runs = len(variants) * len(seeds)
    figures["machine"] = {"serial_s": serial, "grid_s": local, "ratio": serial / local, "runs": runs}
    figures["per_run_cost"] = per_run_cost(here / "g", local, 2)
    print(
        f"1. {runs} runs: serial path (train stage, 2 threads) {serial:.1f} s, local grid (2 workers x 1 thread)"
        f" {local:.1f} s: {serial / local:.2f}x"
    )
    cost = figures["per_run_cost"]
    print(
        f"2. per-run cost beyond the run's own work, warm workers: median {cost['median_s']:.3f} s,"
        f" p90 {cost['p90_s']:.3f} s ({cost['warm_tasks']} tasks);"
        f" a worker's first task: {cost['cold_first_task_s']:.1f} s; whole grid incl. start-up:"
        f" {cost['whole_grid_per_run_s']:.2f} s per run; the driver writes a run's files"
        f" ({cost['bytes_per_run'] / 1e6:.1f} MB median) in {1000 * cost['driver_write_s']:.1f} ms"
    )

    # 5: what Ray itself costs a command: a local Ray's start and stop, and a local MLflow front's
    probe = [python, "-c", "from benchmarks.bench_grid import start_up; start_up()"]
    answer = subprocess.run(
        probe, cwd=here, env={**environment, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    if answer.returncode:
        raise SystemExit(answer.stderr[-3000:])
    up, down, served = map(float, answer.stdout.split()[-3:])
    figures["start_up"] = {"ray_start_s": up, "ray_stop_s": down, "mlflow_front_start_s": served}
    print(f"5. a local Ray starts in {up:.1f} s and stops in {down:.1f} s; the MLflow front starts in {served:.1f} s")

    # 3: two localhost nodes against one
    if not args.skip_cluster:
        walls = {}
        for nodes in (1, 2):
            where = project(folder / f"cluster-{nodes}")
            shutil.copytree(here / "data", where / "data")
            cluster = LocalCluster(where, environment).start(workers=nodes - 1)
            server = None
            try:
                server = MlflowServer(where, environment)
                command = [python, "-m", "pipeline", "grid", "--out", "g", "--address", cluster.address, *grid_args]
                walls[nodes] = timed(command, where, {**environment, "MLFLOW_TRACKING_URI": server.url})
            finally:
                if server is not None:
                    server.stop()
                cluster.stop()
        figures["nodes"] = {"one_s": walls[1], "two_s": walls[2], "ratio": walls[1] / walls[2]}
        print(f"3. {runs} runs: one node {walls[1]:.1f} s, two nodes {walls[2]:.1f} s: {walls[1] / walls[2]:.2f}x")

    # 4: make results, extrapolated from the local grid's wall per second of work
    rate = local / figures["per_run_cost"]["work_s"]
    figures["make_results"] = extrapolate_results(rate)
    lines = ", ".join(f"{k} {v['predicted_min']:.0f} min" for k, v in figures["make_results"].items())
    print(f"4. make results, extrapolated ({rate:.2f} s of grid wall per second of recorded work): {lines}")

    out = ROOT / "reports" / "grid_benchmark.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"written: {out}")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
