"""Plumbing that runs the stages, with no knowledge of what they compute.

- `stage`: what every stage module calls: `run_stage(main)`, and `stage_peak_memory_mb()`.

`python -m pipeline <stage>` (pipeline/__main__.py, what dvc.yaml runs) starts a stage module.
"""
