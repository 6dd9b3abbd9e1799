"""The grid: many variant x seed runs at once, on every core of this machine or on a Ray cluster,
each run the same `pipeline.runner.Runner.run` as the train stage's (`python -m pipeline grid`)."""
