"""`python -m pipeline <stage> [arguments]`: how DVC starts a stage (see dvc.yaml), the same as
`python -m pipeline.stages.<stage>`: same arguments, output and exit status."""

import os
import runpy
import sys

STAGES = ("fetch", "prepare", "train", "compare", "predict", "grid")

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in STAGES:
        print(f"usage: python -m pipeline {{{','.join(STAGES)}}} [arguments]", file=sys.stderr)
        raise SystemExit(2)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up notices, before it loads
    module = f"pipeline.stages.{sys.argv[1]}"
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
