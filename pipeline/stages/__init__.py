"""Thin command-line entry points, one per DVC stage: each parses its arguments, calls the domain
modules and writes its outputs. They run through pipeline.runtime (launcher, worker, run_stage)."""
