"""What every stage module calls: `run_stage(main, parse_args)`, and `stage_peak_memory_mb()` for its records."""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

from pipeline.errors import UserError

Args = TypeVar("Args")  # what a stage's parse_args returns (an argparse.Namespace) and its main takes

# what a stage stopped by Ctrl-C or SIGTERM says: whatever it wrote, DVC records no output of an
# unfinished stage (dvc.lock keeps the last finished run's), and the next `dvc repro` reruns it
INTERRUPTED = "interrupted: the stage did not finish; DVC records none of its outputs and `dvc repro` reruns it"
# the resident set (KiB) when the stage's main began; None until run_stage marks it
_start_rss_kib: int | None = None


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up chatter (oneDNN, CUDA probing) kept off the terminal.

    TF_CPP_MIN_LOG_LEVEL does not reach messages logged before absl is initialised, nor the CUDA
    probe's "failed call to cuInit" on a machine without a GPU, so stderr is pointed at /dev/null for
    the import and the device probe alone; Python errors still propagate.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe, once per process
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def run_stage(
    main: Callable[[Args], None],
    parse_args: Callable[[list[str] | None], Args],
    argv: list[str] | None = None,
    *,
    tensorflow: bool = True,
) -> None:
    """Run a stage: `main(parse_args(argv))`; turn user errors, Ctrl-C and SIGTERM into a message and
    a non-zero exit.

    The arguments are parsed before TensorFlow is imported (seconds, on a busy machine): `--help` and
    a mistyped option answer at once. DVC starts stages through `python -m pipeline <stage>`
    (pipeline/__main__.py).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    signal.signal(signal.SIGTERM, _terminate)
    # Ctrl-C must stop a stage even when it was started from a shell that ignores SIGINT (a
    # background job, some CI runners): Python keeps such an inherited SIG_IGN otherwise
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        args = parse_args(argv)
        if tensorflow:
            import_tensorflow_quietly()
            # the ~400,000 objects TensorFlow's import makes live as long as the process: the cyclic
            # garbage collector's full passes during the stage need not walk them again and again
            gc.freeze()
        mark_stage_start()
        main(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        # run_stage is the process's last act: without this, the interpreter's final collection
        # walks every object the libraries made (about 2 s with TensorFlow, MLflow and Keras
        # loaded) only to free memory that the exit frees anyway; atexit handlers still run
        gc.freeze()


def mark_stage_start() -> None:
    """Take what the process holds now (interpreter and imported libraries) as the stage's zero:
    reset the kernel's peak resident set (Linux: /proc/self/clear_refs, value 5) and note the
    resident set. run_stage calls it just before the stage's main."""
    global _start_rss_kib
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        _start_rss_kib = _proc_status_kib("VmRSS")
    except OSError:  # no /proc (macOS): stage_peak_memory_mb falls back to the process's peak
        _start_rss_kib = None


def stage_peak_memory_mb() -> float:
    """Peak memory the stage itself added, in MiB: the highest resident set since the stage's main
    began (mark_stage_start) minus the resident set at that moment.

    This excludes the interpreter and the libraries imported before the stage's main and counts
    what the stage's work allocated and touched. Where the peak cannot be reset (no /proc, or
    run_stage never ran), it is the process's peak resident set.
    """
    if _start_rss_kib is not None:
        with contextlib.suppress(OSError):
            return max(_proc_status_kib("VmHWM") - _start_rss_kib, 0) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")
