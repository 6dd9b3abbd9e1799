"""Thin command-line entry points, one per DVC stage: each parses its arguments, calls the domain
modules and writes its outputs. Each runs in its own process through
`python -m pipeline <stage>` and pipeline.runtime.stage.run_stage."""
