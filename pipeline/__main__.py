"""`python -m pipeline <stage> [arguments]`: how DVC starts a stage (see dvc.yaml).

The stage runs in the warm stage worker (pipeline.worker) when one can be had, else here, as
`python -m pipeline.stages.<stage>` would: same arguments, output and exit status. This launcher
imports nothing but the standard library, so a stage handed to the worker costs no heavy import.
"""

from __future__ import annotations

import os
import runpy
import sys

STAGES = ("fetch", "prepare", "train", "evaluate", "compare")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in STAGES:
        print(f"usage: python -m pipeline {{{','.join(STAGES)}}} [arguments]", file=sys.stderr)
        raise SystemExit(2)
    module = f"pipeline.stages.{sys.argv[1]}"
    sys.argv = [module, *sys.argv[2:]]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as run_stage sets it: part of the worker's key

    from pipeline import worker

    if worker.enabled():
        try:
            code = worker.delegate(module)
        except KeyboardInterrupt:  # before the stage started (the worker was starting): nothing ran
            print("interrupted: no stage outputs were written", file=sys.stderr)
            raise SystemExit(130) from None
        if code is not None:
            raise SystemExit(code)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
