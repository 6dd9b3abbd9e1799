"""Small pieces of the compare stage: chance-level runs, runs on common seeds, confusion from pairs and
over trained runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support import ROOT

from pipeline.config import load_params
from pipeline.models import upsampling_layer_names
from pipeline.pooled import confusion_from_pairs, trained_confusions
from pipeline.reporting import image_maps
from pipeline.summary_numbers import collapsed_run, on_common_seeds, with_trained


def test_trained_is_decided_once_as_a_column_and_collapsed_runs_read_it():
    accuracies = [0.10, 0.149, 0.15, 0.4999, 0.5]  # died, died, stalled, stalled, trained
    table = with_trained(pd.DataFrame({"test_accuracy": accuracies}), 10)
    assert table["trained"].tolist() == [False, False, False, False, True]
    assert collapsed_run({"trained": False})
    assert not collapsed_run({"trained": True})
    assert collapsed_run({"trained": True, "diverged_at_step": 7})
    assert not collapsed_run({"trained": True, "diverged_at_step": None})


def test_runs_are_compared_on_the_seeds_both_ran_in_seed_order():
    one = pd.DataFrame({"seed": [3, 1, 2, 5], "test_accuracy": [0.3, 0.1, 0.2, 0.5]})
    other = pd.DataFrame({"seed": [4, 2, 3, 1], "test_accuracy": [0.94, 0.92, 0.93, 0.91]})
    a, b = on_common_seeds(one, other)
    assert a.index.tolist() == b.index.tolist() == [1, 2, 3]  # 5 and 4 ran on one side only
    assert a["test_accuracy"].tolist() == [0.1, 0.2, 0.3]
    assert b["test_accuracy"].tolist() == [0.91, 0.92, 0.93]


def test_confusion_from_pairs_counts_by_class_name_in_class_order():
    pairs = pd.DataFrame({"actual": ["b", "b", "a", "c"], "predicted": ["b", "a", "a", "b"]})
    matrix = confusion_from_pairs(pairs, ["a", "b", "c"])
    assert matrix.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 0]]


def test_trained_confusions_leave_out_the_runs_that_did_not_train_and_say_so():
    right = pd.DataFrame({"actual": ["a", "b"], "predicted": ["a", "b"]})
    one_class = pd.DataFrame({"actual": ["a", "b"], "predicted": ["b", "b"]})
    pairs = {("v", 1): right, ("v", 2): one_class, ("v", 3): right, ("w", 1): one_class}
    trained = {("v", 1): True, ("v", 2): False, ("v", 3): True, ("w", 1): False}
    matrices, notes = trained_confusions(pairs, trained, ["a", "b"])
    assert matrices["v"].tolist() == [[2, 0], [0, 2]]  # seeds 1 and 3 only
    assert notes["v"] == "2 runs that trained (1 that did not left out)"
    # no run trained: every run, and the note says so rather than pass it off as confusions
    assert matrices["w"].tolist() == [[0, 1], [0, 1]]
    assert notes["w"] == "no run trained: 1 run summed, not a trained model's confusions"


def test_upsampling_layers_of_the_shipped_variants():
    variants = load_params(ROOT / "params.yaml").variants
    assert upsampling_layer_names(variants["baseline"]) == []
    assert upsampling_layer_names(variants["transposed"]) == ["1_conv_transpose"]
    assert upsampling_layer_names(variants["transposed_deep"]) == ["2_conv_transpose", "3_conv_transpose"]
    assert upsampling_layer_names(variants["resize_conv"]) == ["1_upsample", "2_conv"]


def test_feature_maps_keep_only_image_activations():
    """upsample_only's upsample is followed by a flatten: its (k, 12544) output is no picture."""
    maps = {"1_upsample": np.zeros((3, 28, 28, 16)), "2_flatten": np.zeros((3, 12544))}
    assert list(image_maps(maps)) == ["1_upsample"]
    variants = load_params(ROOT / "params.yaml").variants
    assert upsampling_layer_names(variants["upsample_only"]) == ["1_upsample", "2_flatten"]


def test_the_summary_against_a_control_from_a_finished_comparison(tmp_path, capsys):
    """`python -m pipeline.reporting reports/comparison.csv --baseline <control>`: the same summary,
    another reference."""
    from pipeline.reporting import main
    from pipeline.summary_numbers import RUN_COLUMNS

    rows = []
    for variant, accuracies in {
        "baseline": [0.80, 0.81, 0.79, 0.80, 0.82],
        "wide": [0.83, 0.84, 0.82, 0.85, 0.86],
    }.items():
        for seed, accuracy in enumerate(accuracies, start=1):
            row = dict.fromkeys(RUN_COLUMNS, 1.0) | {"variant": variant, "seed": seed, "test_accuracy": accuracy}
            rows.append(row | {"run_id": f"{variant}{seed}", "trainable_params": 10, "flops_per_image": 10})
    pd.DataFrame(rows).to_csv(tmp_path / "comparison.csv", index=False)
    main([str(tmp_path / "comparison.csv"), "--baseline", "wide"])
    out = capsys.readouterr().out
    assert "vs wide, pp [95% CI]" in out
    assert "| wide " in out and "reference" in out
    # baseline is 3.6 pp below wide on every seed: 5 paired seeds, sign-flip p = 2/32 = 0.0625
    assert "- **baseline**: trained 5/5 against 5/5 (the same share); over all 5 paired runs -3.60 [" in out
    assert "pp (Holm p=0.062: not established)." in out
    assert "adjusted over the 1 comparison with wide (baseline)" in out
    with pytest.raises(SystemExit, match="'nope' is not a variant"):
        main([str(tmp_path / "comparison.csv"), "--baseline", "nope"])
