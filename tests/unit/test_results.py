"""pipeline.results on synthetic per-run files (no training): the protocols' settings as DVC parses them,
the per-run CSV, the tables regenerated from it alone between their markers, and `run`'s bookkeeping."""

from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest
import yaml
from support import ROOT

from pipeline import protocols, result_tables, results, summary_numbers, summary_text
from pipeline.config import load_params, parse_params
from pipeline.datasets import IDX_FILES
from pipeline.errors import DataError

LAYERS = [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": None}]
VARIANTS = {
    "baseline": {"layers": LAYERS},
    "transposed": {"layers": [{"type": "conv_transpose", "filters": 2, "strides": 2}, *LAYERS]},
    "upsample_only": {"layers": [{"type": "upsample"}, *LAYERS]},
}
# test accuracy per variant and seed: transposed dies on seeds 2 and 4
ACCURACY = {
    "baseline": [0.80, 0.81, 0.82, 0.83],
    "transposed": [0.81, 0.10, 0.83, 0.10],
    "upsample_only": [0.82, 0.83, 0.84, 0.85],
}
STEP0 = {"baseline": 2.3, "transposed": 9.0, "upsample_only": 2.4}  # + seed / 10


def params_dict(seeds=(1, 2, 3, 4)) -> dict:
    return {"train": {"seeds": list(seeds)}, "variants": VARIANTS}


def write_runs(root, accuracy=ACCURACY, stopped=None):
    """models/, metrics/ and plots/ of finished runs, as the train stage writes them."""
    stopped = stopped or {}
    for variant, values in accuracy.items():
        for seed, acc in enumerate(values, start=1):
            model_dir = root / "models" / variant / f"seed-{seed}"
            model_dir.mkdir(parents=True)
            died = acc < 0.15
            run = {
                "variant": variant,
                "seed": seed,
                "run_id": f"{variant}{seed}",
                "steps": 1001,
                "stopped_early_at": stopped.get((variant, seed)),
                "diverged_at_step": 12 if (variant, seed) == ("transposed", 4) else None,
                "val_accuracy": acc,
                "train_seconds": 10.0 + seed,
                "trace_seconds": 1.0,
                "train_images_per_second": 1000.0,
                "trainable_params": 100,
                "flops_per_image": 2000,
                "peak_memory_mb": 300.0,
            }
            (model_dir / "run.json").write_text(json.dumps(run))
            loss0 = STEP0[variant] + seed / 10
            pd.DataFrame({"step": [0, 1, 2], "loss": [loss0, 2.0, 1.5 if not died else 2.3], "accuracy": 0.5}).to_csv(
                model_dir / "history.csv", index=False
            )
            pd.DataFrame({"step": [2], "val_loss": [0.5], "val_accuracy": [acc]}).to_csv(
                model_dir / "validation.csv", index=False
            )
            metrics = {
                "variant": variant,
                "seed": seed,
                "run_id": f"{variant}{seed}",
                "test_accuracy": acc,
                "test_loss": 0.5 if not died else 2.3,
                "inference_images_per_second": 5000.0,
                "per_class_accuracy": {str(k): acc for k in range(10)},
            }
            (root / "metrics" / variant).mkdir(parents=True, exist_ok=True)
            (root / "metrics" / variant / f"seed-{seed}.json").write_text(json.dumps(metrics))
            plots = root / "plots" / variant / f"seed-{seed}"
            plots.mkdir(parents=True)
            pd.DataFrame({"actual": ["0"], "predicted": ["0"]}).to_csv(plots / "confusion.csv", index=False)


@pytest.fixture
def collected(tmp_path):
    write_runs(tmp_path, stopped={("baseline", 3): 800})
    table = results.collect(parse_params(params_dict()), tmp_path / "models", tmp_path / "metrics", tmp_path / "plots")
    path = tmp_path / "docs" / "results" / "tutorial-centered.csv"
    path.parent.mkdir(parents=True)
    table.to_csv(path, index=False)
    return table, path


# --- the protocols ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {
            "description": "transposed with layer 2: bias_init 0.0, it's 'quoted'",
            "layers": [{"type": "conv", "a": None}],
        },
        [1, 2.5, -0.0, True, "null", "a b", "x\\y", "ends\\", "q\\'s"],
        {"k": {"nested": [0.0, {"type": "dense", "units": 10, "activation": None}]}},
    ],
)
def test_hydra_value_reads_back_as_the_same_value(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser  # what `dvc exp run -S` uses

    parsed = OverridesParser.create().parse_overrides([f"+x={protocols.hydra_value(value)}"])[0].value()
    assert parsed == value


def test_every_protocol_is_ten_seeds_and_names_its_data():
    assert list(protocols.PROTOCOLS) == [
        "tutorial-centered",
        "tutorial-unit",
        "converge",
        "digits-centered",
        "digits-unit",
    ]
    for protocol in protocols.PROTOCOLS.values():
        assert "train.seeds=[1,2,3,4,5,6,7,8,9,10]" in protocol.settings
        assert any(s.startswith("data.scaling=") for s in protocol.settings)
        assert any(s.startswith("data.dataset=") for s in protocol.settings)
    assert "data.scaling=unit" in protocols.PROTOCOLS["tutorial-unit"].settings
    assert "train.initializer=keras" in protocols.PROTOCOLS["converge"].settings
    for name in ("digits-centered", "digits-unit"):
        digits = protocols.PROTOCOLS[name]
        assert digits.setup[:2] == ("python", "scripts/mnist_digits.py")
        assert "data.validation_size=1000" in digits.settings
        assert {"baseline", "transposed", "transposed_bias0", "upsample_only", "baseline_wide", "resize_conv"} <= set(
            digits.variants
        )
    assert list(protocols.DIGITS_SHA256) == list(IDX_FILES.values())


def test_settings_keep_remove_and_add_variants_of_params_yaml_as_it_is():
    shipped = load_params(ROOT / "params.yaml")
    tutorial = protocols.experiment_settings(protocols.PROTOCOLS["tutorial-centered"], shipped)
    assert not any(s.startswith("~variants") for s in tutorial)  # every variant, and the rescues added
    added = [s.split("=", 1)[0].removeprefix("+variants.") for s in tutorial if s.startswith("+variants")]
    assert added == list(protocols.RESCUES) and all(name.endswith("_bias0") for name in added)
    for name, (base, changes) in protocols.RESCUES.items():
        derived = protocols.derived_variant(shipped, base, changes)
        kinds = [layer["type"] for layer in derived["layers"]]
        # bias_init 0.0 on every convolution after the first, nowhere else
        expected = [0.0 if i > 0 and kind.startswith("conv") else None for i, kind in enumerate(kinds)]
        assert [layer.get("bias_init") for layer in derived["layers"]] == expected, name
    converge = protocols.experiment_settings(protocols.PROTOCOLS["converge"], shipped)
    assert [s for s in converge if s.startswith("~")] == ["~variants.transposed_bias0"]
    digits = protocols.experiment_settings(protocols.PROTOCOLS["digits-centered"], shipped)
    removed = {s.removeprefix("~variants.") for s in digits if s.startswith("~")}
    assert removed == set(shipped.variants) - set(protocols.DIGITS_VARIANTS)

    rescue = dataclasses.replace(
        protocols.PROTOCOLS["digits-unit"],
        variants=(*protocols.DIGITS_VARIANTS, "transposed_deep_bias0"),
        extra_variants={"transposed_deep_bias0": ("transposed_deep", {3: {"bias_init": 0.0}, 4: {"bias_init": 0.0}})},
    )
    added = [s for s in protocols.experiment_settings(rescue, shipped) if s.startswith("+variants")]
    assert len(added) == 1 and added[0].startswith("+variants.transposed_deep_bias0={")
    derived = protocols.derived_variant(shipped, "transposed_deep", {3: {"bias_init": 0.0}, 4: {"bias_init": 0.0}})
    assert [layer.get("bias_init") for layer in derived["layers"]] == [None, None, 0.0, 0.0, None, None, None]
    assert derived["description"] == "transposed_deep with layer 3: bias_init 0.0; layer 4: bias_init 0.0"

    with pytest.raises(DataError, match="no variant nope"):
        protocols.experiment_settings(dataclasses.replace(rescue, variants=("nope",)), shipped)
    with pytest.raises(ValueError, match="no layer 9"):
        protocols.derived_variant(shipped, "transposed", {9: {"bias_init": 0.0}})


def test_commands_are_the_setup_the_grid_and_the_copy():
    shell_line = protocols.shell_line
    shipped = load_params(ROOT / "params.yaml")
    lines = results.commands(protocols.PROTOCOLS["digits-unit"], shipped).splitlines()
    assert lines[0] == "python scripts/mnist_digits.py --out data/mnist-digits-source"
    assert lines[1].startswith("python -m pipeline grid --out grids/digits-unit --set data.dataset=mnist_t10k_split ")
    assert "--set '++data.sha256={train-images-idx3-ubyte.gz: cd3bdce6" in lines[1]
    assert lines[2] == "cp grids/digits-unit/runs.csv docs/results/digits-unit.csv"
    experiment = protocols.experiment_command(protocols.PROTOCOLS["digits-unit"], shipped)
    grid = protocols.grid_command(protocols.PROTOCOLS["digits-unit"], shipped)
    assert experiment[:5] == ["dvc", "exp", "run", "-n", "digits-unit"]  # the same settings, as a DVC experiment
    assert [*experiment[6::2], "++train.threads=1"] == grid[7::2]  # the same settings, and one thread per run
    assert set(experiment[5::2]) == {"-S"} and set(grid[6::2]) == {"--set"}
    # a CSV whose runs record no threads was made before the grid: its block shows what made it
    made = pd.DataFrame({"variant": ["baseline"], "seed": [1], "threads": pd.array([pd.NA], dtype="Int64")})
    before = results.commands(protocols.PROTOCOLS["digits-unit"], shipped, made).splitlines()
    assert before[1] == shell_line(experiment) and before[2] == "python -m pipeline.results collect digits-unit"
    made["threads"] = pd.array([1], dtype="Int64")
    assert results.commands(protocols.PROTOCOLS["digits-unit"], shipped, made).splitlines() == lines


def test_a_protocol_with_more_seeds_shows_their_grid_and_the_add():
    shipped = load_params(ROOT / "params.yaml")
    centred = protocols.PROTOCOLS["digits-centered"]
    lines = results.commands(centred, shipped).splitlines()  # make results: both grids
    more = protocols.more_seeds_command(centred, shipped)
    assert lines[3] == protocols.shell_line(more)
    assert more[4:10] == [
        "--out",
        "grids/digits-centered-more",
        "--variants",
        "baseline,transposed_bias0,upsample_only,resize_conv_bias0,baseline_wide_bias0",
        "--seeds",
        "11-30",
    ]
    assert more[10:] == protocols.grid_command(centred, shipped)[6:]  # the same settings, threads too
    assert lines[4] == "python -m pipeline.results add digits-centered grids/digits-centered-more/runs.csv"
    # seeds 1-10 from `dvc exp run` (no threads), 11-30 from the grid: both made it, both are shown
    made = pd.DataFrame(
        {"variant": ["baseline", "baseline"], "seed": [1, 11], "threads": pd.array([pd.NA, 1], dtype="Int64")}
    )
    shown = results.commands(centred, shipped, made).splitlines()
    assert shown[1].startswith("dvc exp run -n digits-centered ") and shown[3:] == lines[3:]
    # a CSV of seeds 1-10 alone has no more-seeds lines yet
    assert len(results.commands(centred, shipped, made.iloc[:1]).splitlines()) == 3
    with pytest.raises(DataError, match="runs no more seeds"):
        protocols.more_seeds_command(protocols.PROTOCOLS["digits-unit"], shipped)
    assert protocols.seed_range([11, 12, 13]) == "11-13" and protocols.seed_range([1, 3]) == "1,3"
    # a protocol may add fewer seeds (added_seeds); its command and add say so
    fewer = dataclasses.replace(protocols.PROTOCOLS["converge"], added_seeds=tuple(range(11, 21)))
    converge = protocols.more_seeds_command(fewer, shipped)
    assert converge[converge.index("--seeds") + 1] == "11-20"


def test_every_family_names_variants_its_protocol_runs(tmp_path):
    shipped = load_params(ROOT / "params.yaml")
    for protocol in protocols.PROTOCOLS.values():
        names = {
            s.partition("=")[0].removeprefix("+variants.") for s in protocols.experiment_settings(protocol, shipped)
        }
        kept = (set(protocol.variants) if protocol.variants else set(shipped.variants)) - set(protocol.leave_out)
        runs = kept | set(protocol.extra_variants)
        assert protocol.family, protocol.name
        for comparison in protocol.family:
            assert {comparison.variant, comparison.reference} - {""} <= runs, (protocol.name, comparison)
        assert set(protocol.more_seeds) <= runs
        assert names  # the settings are there to run them
    assert "1. trained: `transposed` against `baseline`" in result_tables.families_text()


# --- per-run CSVs ----------------------------------------------------------------------------------


def test_collect_reads_every_run_with_its_step0_loss_and_fate(collected):
    table, path = collected
    assert list(table.columns) == results.RESULT_COLUMNS
    assert set(summary_numbers.RUN_COLUMNS) <= set(table.columns)  # python -m pipeline.reporting reads it too
    assert len(table) == 12
    by_run = table.set_index(["variant", "seed"])
    assert by_run.loc[("transposed", 2), "step0_loss"] == pytest.approx(9.2)  # history.csv's first loss
    assert by_run.loc[("baseline", 1), "step0_loss"] == pytest.approx(2.4)
    assert table.loc[table["variant"] == "transposed", "trained"].tolist() == [True, False, True, False]
    assert by_run.loc[("baseline", 3), "stopped_early_at"] == 800
    assert pd.isna(by_run.loc[("baseline", 1), "stopped_early_at"])
    assert by_run.loc[("transposed", 4), "diverged_at_step"] == 12
    assert by_run.loc[("upsample_only", 4), "test_accuracy"] == 0.85
    # the CSV keeps integers as integers and reads back equal
    text = path.read_text()
    assert "800," in text and "800.0" not in text
    pd.testing.assert_frame_equal(results.read_results(path), table)


def test_collect_names_a_missing_run(tmp_path):
    write_runs(tmp_path)
    with pytest.raises(DataError, match="seed-5"):
        results.collect(
            parse_params(params_dict(seeds=(1, 5))), tmp_path / "models", tmp_path / "metrics", tmp_path / "plots"
        )


def test_read_results_names_a_missing_column(tmp_path):
    (tmp_path / "x.csv").write_text("variant,seed\nbaseline,1\n")
    with pytest.raises(DataError, match="no column test_accuracy"):
        results.read_results(tmp_path / "x.csv")


# --- tables ----------------------------------------------------------------------------------------


def test_the_comparison_table_is_the_reports_from_the_csv_alone(collected):
    table, path = collected
    runs = summary_numbers.runs_table(
        [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in pd.read_csv(path).to_dict("records")
        ]
    )
    for reference in ("baseline", "upsample_only"):
        expected = summary_text.summary_table_markdown(summary_numbers.summarize(runs, 10, baseline=reference))
        assert result_tables.comparison_table(results.read_results(path), reference) == expected
    text = result_tables.comparison_table(table, "baseline")
    # transposed: 2/4 trained against 4/4: 2 dead of 8, C(4,x)C(4,2-x)/C(8,2) = 6, 16, 6 (/28) for x = 0, 1, 2;
    # two-sided p = (6 + 6) / 28 = 0.429; Holm over the 2 comparisons with baseline (upsample_only: p = 1): 0.857
    assert "| transposed    |" in text and "2/4 [15, 85]" in text and "0.429 (0.857)" in text
    with pytest.raises(DataError, match="no variant 'nope'"):
        result_tables.comparison_table(table, "nope")


def test_step0_table_by_hand(collected):
    table, _ = collected
    step0 = result_tables.step0_table(table).set_index("variant")
    # transposed: trained seeds 1, 3 -> 9.1, 9.3 (median 9.2); died seeds 2, 4 -> 9.2, 9.4 (median 9.3)
    assert step0.loc["transposed", "trained"] == "2/4"
    assert step0.loc["transposed", "step-0 loss, trained: median [range]"] == "9.2 [9.1, 9.3]"
    assert step0.loc["transposed", "step-0 loss, did not train: median [range]"] == "9.3 [9.2, 9.4]"
    assert step0.loc["transposed", "diverged (NaN loss)"] == 1
    # baseline: 2.4, 2.5, 2.6, 2.7 -> median 2.55; no run died; seed 3 stopped early at step 800
    assert step0.loc["baseline", "step-0 loss, trained: median [range]"] == "2.55 [2.4, 2.7]"
    assert step0.loc["baseline", "step-0 loss, did not train: median [range]"] == "n/a"
    assert step0.loc["baseline", "stopped early: runs, at steps"] == "1/4, 800"
    assert step0.loc["upsample_only", "stopped early: runs, at steps"] == "0/4"


def test_dead_runs_and_summary_cells(collected):
    table, _ = collected
    assert result_tables.dead_runs(table).splitlines()[-2:] == [
        "- transposed/seed-2: 10.00%, died",
        "- transposed/seed-4: 10.00%, died, loss became NaN/inf at step 12",
    ]
    summary = result_tables.summary_table({"tutorial-centered": table})
    header, _, row = summary.splitlines()
    cells = [c.strip() for c in row.strip("|").split("|")]
    named = dict(zip([c.strip() for c in header.strip("|").split("|")], cells, strict=True))
    assert named["protocol"] == "`tutorial-centered`"
    assert named["`baseline`"] == "4/4, 81.50%"
    # 2/4 against 4/4: Fisher p = 0.43; all runs (0.81-0.80, 0.10-0.81, 0.83-0.82, 0.10-0.83) / 4 = -35.50 pp
    assert named["`transposed`"].startswith("2/4 (p=0.43); -35.50 [")
    assert named["`transposed`"].endswith("(2)") and "both trained +1.00 [" in named["`transposed`"]
    assert named["`upsample_only`"].startswith("4/4; +2.00 [")
    assert "`baseline_wide`" not in named  # run by no protocol here
    assert "`transposed_bias0`" not in named  # neither it nor a variant the same as it


def test_summary_shows_the_variant_a_protocol_names_the_same(collected):
    # converge: transposed_bias0 is transposed there (Keras' biases start at 0), so its cell is transposed's, marked
    table, _ = collected
    header, _, tutorial, converge = result_tables.summary_table(
        {"tutorial-centered": table, "converge": table}
    ).splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    tutorial_cells = dict(zip(columns, [c.strip() for c in tutorial.strip("|").split("|")], strict=True))
    converge_cells = dict(zip(columns, [c.strip() for c in converge.strip("|").split("|")], strict=True))
    assert tutorial_cells["`transposed_bias0`"] == "not run"
    assert converge_cells["`transposed_bias0`"] == "= `transposed`: " + converge_cells["`transposed`"]
    assert converge_cells["`transposed`"].startswith("2/4 (p=0.43); -35.50 [")


DOC = """# Results

Prose before.

<!-- results:tutorial-centered:vs-baseline:start -->
old table
<!-- results:tutorial-centered:vs-baseline:end -->

Prose between.

<!-- results:tutorial-centered:step0:start -->
<!-- results:tutorial-centered:step0:end -->

<!-- results:digits-unit:start -->
not run yet
<!-- results:digits-unit:end -->

<!-- results:summary:start -->
<!-- results:summary:end -->
Prose after.
"""


def test_tables_fill_their_markers_keep_the_prose_and_leave_protocols_without_a_csv(collected, tmp_path):
    table, path = collected
    doc = tmp_path / "results.md"
    doc.write_text(DOC)
    shipped = load_params(ROOT / "params.yaml")
    left = results.render_tables([doc], path.parent, shipped)
    assert left == {doc: ["digits-unit"]}
    text = doc.read_text()
    for prose in ("# Results\n\nProse before.\n", "\nProse between.\n", "\nProse after.\n", "not run yet"):
        assert prose in text
    assert "old table" not in text
    assert result_tables.comparison_table(table, "baseline") in text
    assert "| variant       | trained   | step-0 loss, trained" in text
    assert "| `tutorial-centered` |" in text
    results.render_tables([doc], path.parent, shipped)
    assert doc.read_text() == text  # idempotent


def test_a_whole_protocol_block_and_an_unknown_name(collected, tmp_path):
    table, path = collected
    shipped = load_params(ROOT / "params.yaml")
    family = (
        protocols.Comparison("trained", "transposed", "baseline"),
        protocols.Comparison("accuracy", "transposed", "baseline"),
    )
    protocol = dataclasses.replace(protocols.PROTOCOLS["tutorial-centered"], family=family)
    block = results.protocol_block(protocol, table, None, "dvc exp run ...")
    assert block.startswith("```bash\ndvc exp run ...\n```\n\n| comparison")
    assert block.count("\n| variant ") == 3  # vs baseline, the step-0 table, vs upsample_only
    with pytest.raises(DataError, match="no variant here has a `_bias0` twin"):  # the shipped family needs one
        results.protocol_block(protocols.PROTOCOLS["tutorial-centered"], table, "family", "")
    doc = tmp_path / "bad.md"
    doc.write_text("<!-- results:nope:start -->\n<!-- results:nope:end -->\n")
    with pytest.raises(DataError, match="no protocol 'nope'"):
        results.render_tables([doc], path.parent, shipped)
    doc.write_text("<!-- results:tutorial-centered:oops:start -->\n<!-- results:tutorial-centered:oops:end -->\n")
    with pytest.raises(DataError, match="unknown table"):
        results.render_tables([doc], path.parent, shipped)


# --- run: each protocol as a grid ------------------------------------------------------------------


def test_run_gives_the_grid_the_protocols_settings_and_leaves_params_yaml_alone(tmp_path, monkeypatch):
    import pipeline.grid.driver

    params_path = tmp_path / "params.yaml"
    shipped = {"data": {"scaling": "centered"}, "train": {"steps": 10, "seeds": [1]}, "variants": VARIANTS}
    original = "# shipped, with a comment\n" + yaml.safe_dump(shipped)
    params_path.write_text(original)
    monkeypatch.chdir(tmp_path)
    write_runs(tmp_path)
    calls = []

    def fake_grid(params, variants, seeds, out, **kwargs):
        calls.append((params, list(variants), list(seeds), out))
        table = results.collect(params)
        if seeds == list(protocols.MORE_SEEDS):  # the runs of seeds 1-2, relabelled 11-12
            table = table[table["seed"] <= 2].assign(seed=lambda t: t["seed"] + 10)
        return table[table["variant"].isin(variants)]

    monkeypatch.setattr(pipeline.grid.driver, "run_grid", fake_grid)
    protocol = dataclasses.replace(
        protocols.PROTOCOLS["tutorial-centered"],
        settings=("train.steps=1001", "train.seeds=[1,2,3,4]", "data.scaling=unit"),
        references=("baseline",),
        extra_variants={},
        more_seeds=("baseline", "upsample_only"),
    )
    path = results.run_protocol(protocol, params_path, tmp_path / "docs" / "results")
    assert params_path.read_text() == original
    (params, variants, seeds, out), (more_params, more_variants, more_seeds, more_out) = calls
    assert (params.train.steps, params.data.scaling, params.train.threads) == (1001, "unit", 1)
    assert variants == list(params_dict()["variants"]) and seeds == [1, 2, 3, 4]
    assert out == protocols.GRIDS / "tutorial-centered"
    assert more_params == params and more_out == protocols.GRIDS / "tutorial-centered-more"
    assert more_variants == ["baseline", "upsample_only"] and more_seeds == list(range(11, 31))
    written = results.read_results(path)
    assert len(written) == 12 + 4 and written["seed"].tolist()[-4:] == [11, 12, 11, 12]
    with pytest.raises(DataError, match="already in the CSV: baseline/seed-1"):
        results.add_runs(written, written[written["seed"] == 1])


def test_rescue_table_pairs_each_variant_with_its_bias0_twin_and_pools_them():
    rows = []
    for variant, trained in (
        ("a", [1, 1, 0, 0]),
        ("a_bias0", [1, 1, 1, 1]),
        ("b", [0, 0, 0, 0]),
        ("b_bias0", [1, 1, 1, 0]),
    ):
        for seed, ok in enumerate(trained, 1):
            rows.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "trained": bool(ok),
                    "step0_loss": 9.0 if "bias0" not in variant else 2.5,
                }
            )
    table = result_tables.rescue_table(pd.DataFrame(rows)).set_index("variant")
    assert list(table.index) == ["a", "b", "all of them"]
    assert table.loc["a", "trained, tutorial's biases"] == "2/4" and table.loc["a", "trained, bias0"] == "4/4"
    # by hand: 2/4 against 4/4 is p = 0.4286; 0/4 against 3/4 is 0.1429; pooled 2/8 against 7/8 is 0.04056
    assert table.loc["a", "Fisher p"] == "0.43"
    assert table.loc["b", "Fisher p"] == "0.14"
    assert table.loc["all of them", "Fisher p"] == "0.041"
    assert table.loc["all of them", "trained, bias0"] == "7/8"
    assert table.loc["b", "step-0 loss, bias0: median"] == "2.5"
    assert result_tables.rescue_table(pd.DataFrame(rows[:4])).empty


def test_stopping_table_counts_early_stops_and_the_cap_in_epochs():
    # epochs of 100 steps, a cap of 500: a run stopped early at step 299 ran 300 steps (3 epochs)
    rows = [
        {"variant": "a", "seed": 1, "steps": 300, "stopped_early_at": 299},
        {"variant": "a", "seed": 2, "steps": 500, "stopped_early_at": None},
        {"variant": "a", "seed": 3, "steps": 401, "stopped_early_at": 400},
        {"variant": "b", "seed": 1, "steps": 500, "stopped_early_at": None},
    ]
    table = pd.DataFrame(rows)
    table["stopped_early_at"] = table["stopped_early_at"].astype("Int64")
    stopping = result_tables.stopping_table(table, epoch_steps=100, max_steps=500).set_index("variant")
    assert list(stopping.columns) == [
        "stopped early",
        "reached the cap (5 epochs)",
        "epochs trained: median [range]",
    ]
    assert stopping.loc["a", "stopped early"] == "2/3" and stopping.loc["b", "stopped early"] == "0/1"
    assert stopping.loc["a", "reached the cap (5 epochs)"] == "1/3"
    assert stopping.loc["b", "reached the cap (5 epochs)"] == "1/1"
    # a: 3.0, 5.0, 4.0 epochs -> median 4 [3, 5]
    assert stopping.loc["a", "epochs trained: median [range]"] == "4 [3, 5]"


def test_stopping_block_reads_the_epoch_and_cap_from_the_protocol():
    table = pd.DataFrame([{"variant": "baseline", "seed": 1, "steps": 1720, "stopped_early_at": pd.NA}], dtype=object)
    table["steps"] = table["steps"].astype("Int64")
    table["stopped_early_at"] = table["stopped_early_at"].astype("Int64")
    block = results.protocol_block(protocols.PROTOCOLS["converge"], table, "stopping", "")
    assert "reached the cap (15 epochs)" in block and "0/1" in block and "2 [2, 2]" in block
    with pytest.raises(DataError, match="sets no train.validation_every"):
        results.protocol_block(protocols.Protocol("bare", "no settings", ()), table, "stopping", "")


def test_agreement_puts_a_regeneration_beside_the_published_runs_and_checks_its_intervals(collected):
    table, _ = collected
    same = result_tables.agreement_table(table, table)
    assert list(same["variant"]) == ["baseline", "transposed", "upsample_only"]
    assert same["share inside"].all() and same["mean inside"].all()
    assert same.set_index("variant").loc["transposed", "trained before"].startswith("2/4 [")
    shifted = table.copy()
    shifted.loc[shifted["variant"] == "baseline", "test_accuracy"] += 0.05  # mean 81.5 -> 86.5, outside
    shifted.loc[shifted["variant"] == "transposed", "test_accuracy"] = 0.10  # 0/4 trained
    moved = result_tables.agreement_table(table, shifted).set_index("variant")
    assert not moved.loc["baseline", "mean inside"] and moved.loc["baseline", "share inside"]
    assert moved.loc["transposed", "trained after"] == "0/4" and not moved.loc["transposed", "share inside"]
    assert moved.loc["upsample_only", "mean inside"]
