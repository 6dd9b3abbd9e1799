"""How much logging a tracking server takes: N client processes, each logging runs the way the train
stage does (params, tags, batched per-step metrics), against MLFLOW_TRACKING_URI.

    make server                                   # another terminal
    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python -m benchmarks.bench_tracking --clients 1 4 8

Bounded: each client logs --runs runs, then stops. Prints runs/s and metric values/s per client count.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time


def client(uri: str, experiment: str, runs: int, steps: int, out: multiprocessing.Queue) -> None:
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    mlflow.set_tracking_uri(uri)
    c = mlflow.MlflowClient()
    experiment_id = c.get_experiment_by_name(experiment).experiment_id
    start = time.perf_counter()
    for i in range(runs):
        run = c.create_run(experiment_id, run_name=f"load/{os.getpid()}-{i}")
        run_id = run.info.run_id
        c.log_batch(
            run_id,
            params=[Param(f"train.p{k}", str(k)) for k in range(15)],
            tags=[RunTag("variant", "load"), RunTag("seed", str(i))],
        )
        now = int(time.time() * 1000)
        for chunk in range(0, steps, 100):  # the train stage logs one batch per 100 steps
            metrics = [
                Metric(key, 0.5, now, s) for s in range(chunk, min(chunk + 100, steps)) for key in ("loss", "accuracy")
            ]
            c.log_batch(run_id, metrics=metrics)
        c.set_terminated(run_id, "FINISHED")
    out.put(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--runs", type=int, default=5, help="runs per client")
    parser.add_argument("--steps", type=int, default=1001, help="logged steps per run")
    args = parser.parse_args()

    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise SystemExit("error: set MLFLOW_TRACKING_URI to the server to measure (make server)")
    mlflow.set_tracking_uri(uri)
    experiment = "tracking-load"
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment)
    for n in args.clients:
        queue: multiprocessing.Queue = multiprocessing.Queue()
        start = time.perf_counter()
        procs = [
            multiprocessing.Process(target=client, args=(uri, experiment, args.runs, args.steps, queue))
            for _ in range(n)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=600)
        wall = time.perf_counter() - start
        total_runs = n * args.runs
        values = total_runs * args.steps * 2
        print(
            f"{n:>3} clients: {total_runs} runs in {wall:.1f} s = {total_runs / wall:.1f} runs/s,"
            f" {values / wall:,.0f} metric values/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
