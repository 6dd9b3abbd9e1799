"""params.yaml validation: every mistake names the key, the bad value and what is allowed."""

from __future__ import annotations

import copy

import pytest
import yaml
from support import ROOT

from pipeline.config import LAYER_TYPES, load_params, parse_params
from pipeline.data_config import load_data_config
from pipeline.errors import ConfigError

SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())


def error_for(edit) -> str:
    raw = copy.deepcopy(SHIPPED)
    edit(raw)
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    return str(err.value)


def test_shipped_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.train.batch_size == 16 and params.train.steps == 1001
    assert {"baseline", "transposed"} <= set(params.variants)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda r: r.update(trian=r.pop("train")), ["trian: unknown key", "did you mean 'train'?"]),
        (lambda r: r["train"].update(batchsize=8), ["train.batchsize: unknown key", "did you mean 'batch_size'?"]),
        (lambda r: r["train"].update(steps=0), ["train.steps", "greater than 0", "got 0"]),
        (lambda r: r["train"].update(batch_size=-16), ["train.batch_size", "greater than 0", "got -16"]),
        (lambda r: r["train"].update(steps="many"), ["train.steps", "valid integer", "'many'"]),
        (lambda r: r["train"].update(seeds=[]), ["train.seeds", "at least 1 item"]),
        (lambda r: r["train"].update(seeds=[1, 1]), ["train.seeds", "distinct"]),
        (lambda r: r["train"].update(optimizer="rmsprop"), ["train.optimizer", "'sgd' or 'adam'", "'rmsprop'"]),
        (lambda r: r["data"].update(mirrors="http://x"), ["data.mirrors", "valid list"]),
        (
            lambda r: r["variants"]["baseline"]["layers"].insert(0, {"type": "deconv", "filters": 3}),
            ["variants.baseline.layers[0].type: unknown layer type 'deconv'", "allowed: " + ", ".join(LAYER_TYPES)],
        ),
        (
            lambda r: r["variants"]["baseline"]["layers"].insert(0, {"type": "avgpool"}),
            ["layers[0].type: unknown layer type 'avgpool' (did you mean 'avg_pool'?)"],
        ),
        (
            lambda r: r["variants"]["baseline"]["layers"].insert(0, {"type": "avg_pool", "pool": 3}),
            ["variants.baseline.layers[0].pool: unknown key", "did you mean 'pool_size'?"],
        ),
        (
            lambda r: r["variants"]["baseline"]["layers"][0].update(kernel=5),
            ["variants.baseline.layers[0].kernel: unknown key", "did you mean 'kernel_size'?"],
        ),
        (
            lambda r: r["variants"]["baseline"]["layers"][0].pop("type"),
            ["variants.baseline.layers[0]: a layer needs a 'type'"],
        ),
        (
            lambda r: r["variants"]["transposed"]["layers"][1].update(padding="full"),
            ["variants.transposed.layers[1].padding", "'same' or 'valid'"],
        ),
        (lambda r: r["variants"].update({"bad name": r["variants"]["baseline"]}), ["variant name 'bad name'"]),
        (lambda r: r.update(variants={}), ["variants", "at least 1 item"]),
    ],
)
def test_mistakes_name_the_key(edit, expected):
    message = error_for(edit)
    for part in expected:
        assert part in message, message


def test_yaml_is_read_safely(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)


def test_an_unknown_variant_name_gets_a_did_you_mean():
    params = parse_params(copy.deepcopy(SHIPPED))
    with pytest.raises(ConfigError) as err:
        params.variant("transposd")
    message = str(err.value)
    assert "variant 'transposd' is not in params.yaml (did you mean 'transposed'?); known: " in message
    assert ", ".join(params.variants) in message
    with pytest.raises(ConfigError) as err:
        params.variant("zzz")
    assert "did you mean" not in str(err.value)
    assert params.variant("transposed") is params.variants["transposed"]


# --- the data section alone (pipeline.data_config): what fetch and prepare read --------------------


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r["data"].update(scalin="unit"),
        lambda r: r["data"].update(scaling="minmax"),
        lambda r: r["data"].update(validation_size=-1, split_seed="x"),
        lambda r: r.update(data=5),
        lambda r: r.pop("data"),
        lambda r: None,
    ],
)
def test_the_data_section_alone_reads_as_in_the_whole_file(tmp_path, edit):
    raw = copy.deepcopy(SHIPPED)
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    outcomes = []
    for load in (lambda: load_params(path).data, lambda: load_data_config(path)):
        try:
            outcomes.append(load())
        except ConfigError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]


def test_the_data_section_alone_does_not_read_the_other_sections(tmp_path):
    raw = copy.deepcopy(SHIPPED)
    raw["train"]["stepz"] = 3
    raw["variants"]["baseline"]["layers"][0]["type"] = "deconv"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_data_config(path) == parse_params(SHIPPED).data
    with pytest.raises(ConfigError, match="train.stepz: unknown key"):
        load_params(path)
