"""`python -m pipeline <stage> [arguments]`: how DVC starts a stage (see dvc.yaml).

The stage runs in the warm stage worker (pipeline/runtime/worker.py) when one can take it, else
here, as `python -m <package>.<stage>` would: same arguments, output and exit status. When the
worker is on but cannot take the stage, one line on stderr says why. This launcher imports
nothing but the standard library, so a stage handed to the worker costs no heavy import.
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Sequence


def main(package: str, stages: Sequence[str]) -> None:
    """Run the stage named by sys.argv[1], the module `<package>.<stage>`, with sys.argv[2:]."""
    if len(sys.argv) < 2 or sys.argv[1] not in stages:
        print(f"usage: python -m {package.split('.')[0]} {{{','.join(stages)}}} [arguments]", file=sys.stderr)
        raise SystemExit(2)
    module = f"{package}.{sys.argv[1]}"
    sys.argv = [module, *sys.argv[2:]]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as run_stage sets it: part of the worker's key

    from pipeline.runtime import worker

    if worker.enabled():
        try:
            code = worker.delegate(module)
        except KeyboardInterrupt:  # before the stage started (the worker was starting): nothing ran
            print("interrupted: no stage outputs were written", file=sys.stderr)
            raise SystemExit(130) from None
        if code is not None:
            raise SystemExit(code)
    runpy.run_module(module, run_name="__main__", alter_sys=True)
