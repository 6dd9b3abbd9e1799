"""One run, one function: `Runner.run` trains one variant x seed, tests it, writes its files and logs
its MLflow run. The train@<variant> stage, the grid's workers and so the published protocols all call
it; there is no second implementation of a run."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import artifacts, evaluation, models, paths, training, training_logging
from pipeline.confusion_figure import confusion_matrix_figure
from pipeline.record import MetricsRecord, RunRecord
from pipeline.runtime.stage import stage_peak_memory_mb

if TYPE_CHECKING:
    from pipeline.config import Params
    from pipeline.prepared import Prepared


@dataclass(frozen=True)
class OutputRoots:
    """Where a run's files go: models/<variant>/seed-<n>/, metrics/<variant>/seed-<n>.json and
    plots/<variant>/seed-<n>/ under these roots (pipeline.paths)."""

    models: Path = paths.MODELS
    metrics: Path = paths.METRICS
    plots: Path = paths.PLOTS

    def of(self, variant: str, seed: int) -> list[Path]:
        """The run's three outputs, the metrics file last: the file a finished run writes last."""
        return [
            paths.model_dir(variant, seed, self.models),
            paths.plots_dir(variant, seed, self.plots),
            paths.metrics_file(variant, seed, self.metrics),
        ]


def run_key(params: Params, variant: str, seed: int, data: Prepared) -> str:
    """What a run's numbers depend on, hashed: the variant's layers, the training, testing and data
    settings (train.threads included), the data's own checksums and the seed. Two runs with one key
    give the same numbers on the CPU (same CPU family, same wheels; docs/design.md)."""
    definition = {
        "variant": params.variants[variant].model_dump(exclude={"description"}),
        "seed": seed,
        "train": params.train.model_dump(exclude={"seeds"}),
        "evaluate": params.evaluate.model_dump(),
        "data": params.data.model_dump(exclude={"mirrors", "timeout_seconds"}),
        "splits": dict(sorted(data.split_sha256.items())),
    }
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:16]


class Runner:
    """The runs of one process: the prepared data, its training tensors, and one Trainer per variant
    kept across seeds (restarted, not traced again). Create it after `training.set_threads` and
    `training.make_strategy`, before which TensorFlow must run no op."""

    def __init__(self, params: Params, data: Prepared, experiment_id: str, *, strategy: Any = None) -> None:
        self.params, self.data, self.experiment_id, self.strategy = params, data, experiment_id, strategy
        self.tensors = training.data_tensors(data.x_train, data.y_train)  # once for every run
        self._trainers: dict[str, training.Trainer] = {}

    def run(
        self,
        variant: str,
        seed: int,
        outputs: OutputRoots,
        *,
        label: str = "",
        tags: Mapping[str, str] | None = None,
        stage: str | None = None,
        before_start: Callable[[str], None] | None = None,
    ) -> tuple[RunRecord, MetricsRecord]:
        """Train, test, write the files under `outputs` and log the MLflow run of one variant x seed;
        returns what its run.json and its metrics JSON hold.

        `tags` go on the MLflow run beside the usual ones, `stage` replaces its `stage` tag (default
        train@<variant>), and `before_start(key)` is called with the run's key just before its MLflow
        run starts (the grid retires an earlier attempt's runs there)."""
        params, data = self.params, self.data
        spec, config = params.variant(variant), params.train
        layers = models.check_variant(variant, spec, data.input_shape, data.num_classes)
        # counted once, for the MLflow params (logged as the run starts) and for run.json
        trainable, flops = models.trainable_params(layers), models.flops_per_image(layers)
        name = paths.run_name(variant, seed)
        key = run_key(params, variant, seed, data)
        trainer = training.build_trainer(
            spec, config, data, seed=seed, strategy=self.strategy, tensors=self.tensors,
            previous=self._trainers.get(variant),
        )  # fmt: skip
        self._trainers[variant] = trainer
        if before_start is not None:
            before_start(key)
        with training_logging.training_run(
            self.experiment_id,
            variant,
            seed,
            params,
            data,
            trainable_params=trainable,
            flops_per_image=flops,
            tags={"run_key": key, **(tags or {})},
            stage=stage,
        ) as run:
            progress = (run.log_steps, training.progress_printer(f"{name}{label}", config))
            result = training.run(trainer, data, seed=seed, name=name, on_chunk=progress)
            record = RunRecord(
                variant=variant,
                seed=seed,
                run_id=run.run_id,
                experiment_id=run.experiment_id,
                run_key=key,
                steps=result.steps_done,
                stopped_early_at=result.stopped_early_at,
                diverged_at_step=result.diverged_at,
                val_accuracy=result.final_val_accuracy,
                train_seconds=result.train_seconds,
                trace_seconds=result.trace_seconds,
                validation_seconds=result.validation_seconds,
                train_images_per_second=result.images_per_second(config.batch_size),
                threads=config.threads,
                trainable_params=trainable,
                flops_per_image=flops,
                data_scaling=data.scaling,
                peak_memory_mb=stage_peak_memory_mb(),
            )
            model_dir, plots, metrics_file = outputs.of(variant, seed)
            # the trained model and its metrics reach the disk before anything else can fail
            artifacts.write_trained(
                model_dir, trainer.model, result, spec={"variant": variant, **spec.model_dump()}, run=record
            )
            run.finish(trainer.model, result, record, model_dir, data)
            tested = evaluation.evaluate(
                trainer.predict, data.x_test, data.y_test, data.num_classes, params.evaluate.batch_size
            )
            metrics = evaluation.metrics_record(record, tested, data.classes, params.evaluate.batch_size)
            artifacts.write_evaluation(
                plots,
                metrics_file,
                metrics,
                evaluation.confusion_pairs(tested.confusion, data.classes),
                confusion_matrix_figure(
                    tested.confusion, data.classes, f"{name}: test accuracy {tested.test_accuracy:.2%}"
                ),
            )
            run.log_evaluation(tested, data, plots / "confusion.png", evaluation.per_class_table(tested, data.classes))
        print(
            f"{name}: trained {result.steps_done} steps in {result.train_seconds:.1f}s"
            f" ({record.train_images_per_second:,.0f} images/s), val_accuracy {record.val_accuracy},"
            f" test_accuracy {tested.test_accuracy:.4f} ({tested.images_per_second:,.0f} images/s at batch"
            f" {params.evaluate.batch_size})",
            file=sys.stderr,
        )
        return record, metrics
