"""The grid's driver: every variant x seed as a Ray task, finished runs written under the output
folder as they come back, a progress line, then runs.csv and the comparison tables.

Resuming is by the files: a run whose metrics file (written last) and run.json with the same run key
are under the output folder is done and not run again. A task whose worker or node died is run again
(up to MAX_ATTEMPTS); a run that fails by itself (a UserError in the run) is reported, not retried.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import artifacts, tracking
from pipeline.config import Params
from pipeline.errors import TrackingError, UserError
from pipeline.grid import cluster, front, ledger, worker
from pipeline.grid.data import ensure_prepared
from pipeline.runner import OutputRoots, run_key

MAX_ATTEMPTS = 3  # a run whose worker or node died is tried again, up to this many attempts in all
RUNS_CSV = "runs.csv"
TASKS_LOG = "tasks.jsonl"  # one line per finished or failed attempt: where it ran, how long it took


@dataclass
class Tally:
    """What the progress line and the closing summary say."""

    total: int
    skipped: int = 0
    done: int = 0
    failed: dict[tuple[str, int], str] = field(default_factory=dict)
    retried: int = 0
    started: float = field(default_factory=time.monotonic)


def roots(out: Path) -> OutputRoots:
    """A grid's per-run files: the same layout as the pipeline's, under the output folder."""
    return OutputRoots(out / "models", out / "metrics", out / "plots")


def is_finished(out: Path, variant: str, seed: int, key: str) -> bool:
    """The run's metrics file is there (written last) and its run.json has this run key."""
    model_dir, _, metrics_file = roots(out).of(variant, seed)
    if not metrics_file.is_file():
        return False
    try:
        return json.loads((model_dir / "run.json").read_text()).get("run_key") == key
    except (OSError, ValueError):
        return False


def write_files(out: Path, variant: str, seed: int, files: dict[str, bytes]) -> None:
    """A finished run's files under `out`, each output all or nothing, the metrics file last."""
    for final in roots(out).of(variant, seed):
        prefix = final.relative_to(out).as_posix()
        if prefix in files:  # a file: metrics/<variant>/seed-<n>.json
            artifacts.write_atomic(final, files[prefix])
            continue
        with artifacts.atomic_dir(final) as scratch:
            for name, content in files.items():
                if name.startswith(prefix + "/"):
                    target = scratch / name[len(prefix) + 1 :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(content)


def runs_table(out: Path, tasks: Sequence[tuple[str, int]]) -> pd.DataFrame:
    """The per-run table (the columns of docs/results/*.csv) of the tasks finished under `out`."""
    from pipeline.results import per_run_table

    where = roots(out)
    return per_run_table(
        [
            artifacts.read_run_outputs(variant, seed, where.models, where.metrics, where.plots)
            for variant, seed in tasks
            if where.of(variant, seed)[2].is_file()
        ]
    )


def tables(table: pd.DataFrame, variants: Sequence[str]) -> str:
    """The comparison tables a protocol publishes: against `baseline` (else the first variant),
    and the runs that did not train."""
    from pipeline.result_tables import comparison_table, dead_runs

    present = [v for v in variants if v in set(table["variant"])]
    if not present:
        return ""
    reference = "baseline" if "baseline" in present else present[0]
    return f"Against {reference}:\n\n{comparison_table(table, reference)}\n\n{dead_runs(table)}\n"


def run_grid(
    params: Params,
    variants: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    *,
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run every variant x seed not yet finished under `out`; returns the per-run table of all of them
    (also written to out/runs.csv). Raises UserError when runs failed, after writing what finished."""
    out = Path(out)
    address = cluster.cluster_address(address)
    uri = tracking.tracking_uri()
    if address is not None and not uri.startswith(("http://", "https://")):
        raise TrackingError(
            f"the grid on a cluster logs from other machines, which cannot write to {uri}: start the team"
            " tracking server (make server, docs/team.md) and set MLFLOW_TRACKING_URI=http://HOST:PORT"
        )
    if address is not None:
        cluster.check_reachable(address)  # before any download or preparing
    data = ensure_prepared(params.data)
    grid = ledger.grid_id(out)
    tasks = [(variant, seed) for variant in variants for seed in seeds]
    keys = {task: run_key(params, *task, data) for task in tasks}
    # variant by variant: a worker's next run is mostly of the variant it just ran (seed by seed
    # measured slower over the serial path, docs/performance.md)
    todo = deque(task for task in tasks if not is_finished(out, *task, keys[task]))
    tally = Tally(total=len(tasks), skipped=len(tasks) - len(todo))
    out.mkdir(parents=True, exist_ok=True)
    if todo:
        print(
            f"grid {out}: {len(tasks)} runs ({len(variants)} variants x {len(seeds)} seeds),"
            f" {tally.skipped} already finished, {len(todo)} to run",
            file=sys.stderr,
        )
        experiment_id = tracking.connect()
        store = tracking.sqlite_path(uri)
        fronted = (
            front.sqlite_front(uri, tracking.artifacts_location(uri), out / "mlflow-front.log")
            if store is not None
            else nullcontext(uri)
        )
        with fronted as worker_uri:
            import mlflow

            mlflow.set_tracking_uri(worker_uri)  # the driver too writes through the server from now on
            _schedule(params, data, todo, keys, out, grid, worker_uri, experiment_id, tally, workers, address, progress)
    table = runs_table(out, tasks)
    artifacts.write_atomic(out / RUNS_CSV, table.to_csv(index=False).encode())
    _summary(tally, out)
    if tally.failed:
        lines = "\n".join(f"  {variant}/seed-{seed}: {why}" for (variant, seed), why in tally.failed.items())
        raise UserError(
            f"{len(tally.failed)} of {tally.total} runs failed:\n{lines}\n{out / RUNS_CSV} holds the"
            " finished ones; fix the cause and run the same command again to run the rest"
        )
    return table


def _schedule(
    params: Params,
    data: Any,
    todo: deque,
    keys: dict,
    out: Path,
    grid: str,
    worker_uri: str,
    experiment_id: str,
    tally: Tally,
    workers: int | None,
    address: str | None,
    progress: bool,
) -> None:
    import ray
    from ray.exceptions import RayError, RayTaskError

    threads = params.train.threads
    workers = workers or max((os.cpu_count() or 1) // threads, 1)
    attempts: dict[tuple[str, int], int] = {}
    inflight: dict[Any, tuple[str, int]] = {}
    bar = _bar(tally, progress)
    try:
        with cluster.connect(address, workers, threads) as where:
            _check_nodes(threads)
            task = ray.remote(num_cpus=threads, max_retries=0)(worker.run_task)
            shared = dict(
                grid=grid,
                params_json=params.model_dump_json(),
                data=ray.put(data),
                tracking_uri=worker_uri,
                experiment_id=experiment_id,
                tags={"grid.out": str(out.resolve())},
            )
            while todo or inflight:
                capacity = max(int(ray.cluster_resources().get("CPU", 0) // threads), 1)
                where["nodes"] = sum(1 for node in ray.nodes() if node.get("Alive"))
                while todo and len(inflight) < capacity:
                    variant, seed = todo.popleft()
                    attempts[(variant, seed)] = attempts.get((variant, seed), 0) + 1
                    inflight[task.remote(variant, seed, **shared)] = (variant, seed)
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
                for ref in ready:
                    run = inflight.pop(ref)
                    try:
                        result: worker.TaskResult = ray.get(ref)
                    except RayTaskError as exc:  # the run itself failed: reported, not retried
                        cause = exc.cause
                        why = str(cause) if isinstance(cause, UserError) else f"{type(cause).__name__}: {cause}"
                        tally.failed[run] = why
                        _log_task(out, run, attempts[run], error=tally.failed[run])
                    except RayError as exc:  # its worker or node died: try again elsewhere
                        if attempts[run] < MAX_ATTEMPTS:
                            tally.retried += 1
                            todo.appendleft(run)
                        else:
                            tally.failed[run] = f"its worker died {attempts[run]} times ({type(exc).__name__})"
                        _log_task(out, run, attempts[run], error=type(exc).__name__)
                    else:
                        writing = time.perf_counter()
                        write_files(out, *run, result.files)
                        tally.done += 1
                        _log_task(out, run, attempts[run], result=result, write=time.perf_counter() - writing)
                _show(bar, tally, len(inflight), capacity, where)
    except KeyboardInterrupt:
        left = ledger.fail_running(experiment_id, grid, [keys[run] for run in inflight.values()])
        if bar is not None:
            bar.close()
        print(
            f"interrupted: {tally.skipped + tally.done} of {tally.total} runs are finished and kept in {out};"
            f" {left} MLflow runs in progress were marked FAILED. Run the same command again to resume:"
            " finished runs are not run again",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    if bar is not None:
        bar.close()


def _check_nodes(threads: int) -> None:
    """Every alive node: one with train.threads CPUs exists, and the versions check, one small task
    pinned to each."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(worker.versions)
    alive = [node for node in ray.nodes() if node.get("Alive")]
    largest = max(node.get("Resources", {}).get("CPU", 0) for node in alive)
    if largest < threads:  # Ray would wait for such a node for ever
        raise UserError(
            f"train.threads is {threads}, but the largest node has {largest:g} CPUs: each run asks for"
            " train.threads CPUs on one node; --set train.threads=1, or nodes with more CPUs"
        )
    nodes = [node["NodeID"] for node in alive]
    pinned = [NodeAffinitySchedulingStrategy(node, soft=False) for node in nodes]
    found = ray.get([probe.options(scheduling_strategy=where).remote() for where in pinned], timeout=120)
    cluster.check_versions(worker.versions(), found)


def _log_task(
    out: Path, run: tuple[str, int], attempt: int, *, result: Any = None, error: str | None = None, write: float = 0.0
) -> None:
    """A line of tasks.jsonl: the attempt, where it ran, its task's seconds and the driver's seconds
    to write its files (with their size), or why it failed."""
    line = {"variant": run[0], "seed": run[1], "attempt": attempt}
    if result is not None:
        line |= {"node": result.node, "pid": result.pid, "task_seconds": round(result.task_seconds, 4)}
        size = sum(len(content) for content in result.files.values())
        line |= {"write_seconds": round(write, 4), "bytes": size, "run_id": result.record.run_id}
    if error is not None:
        line["error"] = error
    with open(out / TASKS_LOG, "a") as log:
        log.write(json.dumps(line) + "\n")


def _bar(tally: Tally, progress: bool) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(
        total=tally.total,
        initial=tally.skipped,
        desc="grid",
        unit="run",
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5 if tty else 30,
        smoothing=0.1,
    )


def _show(bar: Any, tally: Tally, busy: int, capacity: int, where: dict) -> None:
    """The progress line, redrawn when a count changes (and each second on a terminal, for the ETA)."""
    if bar is None:
        return
    state = (tally.done, len(tally.failed), tally.retried, busy, capacity, where["nodes"])
    if state == getattr(bar, "grid_state", None) and not sys.stderr.isatty():
        return
    bar.grid_state = state
    bar.n = tally.skipped + tally.done + len(tally.failed)
    bar.set_postfix_str(
        f"failed {len(tally.failed)}, retried {tally.retried}, workers {busy}/{capacity}"
        f" on {where['nodes']} node{'s' if where['nodes'] != 1 else ''}",
        refresh=False,
    )
    bar.refresh()


def _summary(tally: Tally, out: Path) -> None:
    minutes = (time.monotonic() - tally.started) / 60
    print(
        f"grid {out}: {tally.done} runs finished now, {tally.skipped} earlier, {len(tally.failed)} failed,"
        f" {tally.retried} retried, in {minutes:.1f} min; per-run table: {out / RUNS_CSV}",
        file=sys.stderr,
    )
