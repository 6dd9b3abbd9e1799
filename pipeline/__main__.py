"""`python -m pipeline <stage> [arguments]`: how DVC starts a stage (pipeline/runtime/launcher.py)."""

from pipeline.runtime.launcher import main

if __name__ == "__main__":
    main("pipeline.stages", ("fetch", "prepare", "train", "evaluate", "compare", "predict"))
