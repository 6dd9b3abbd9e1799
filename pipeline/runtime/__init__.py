"""Plumbing that runs the stages, with no knowledge of what they compute.

- `launcher`: `python -m pipeline <stage>` (what dvc.yaml runs) hands the stage to the worker, or
  runs it in its own process.
- `worker`: the warm stage worker, which forks one single-threaded child per stage.
- `stage`: what every stage module calls: `run_stage(main)`, and `stage_peak_memory_mb()`.
"""
