"""dvc.yaml against the code: every stage lists the project modules it imports (so an edit reruns it),
and its paths are the layout pipeline.paths writes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from support import ROOT

from pipeline import paths

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]
# how a stage is started, not what it computes: a change here reruns nothing
PLUMBING = {"pipeline/__init__.py", "pipeline/__main__.py"}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imported_modules(path: Path) -> set[str]:
    """pipeline.* modules a file imports at run time, at any depth (lazy imports in functions too;
    not those under `if TYPE_CHECKING:`, which never run)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node)
        for child in node.body
        for n in ast.walk(child)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "pipeline"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pipeline import paths`
    return found


def _module_file(module: str) -> str | None:
    parts = module.split(".")
    for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate.relative_to(ROOT).as_posix()
    return None  # a name inside a module (`from pipeline.config import Params`), not a module


def project_imports(stage_file: str) -> set[str]:
    """The project files a stage module runs: itself and everything it imports, transitively."""
    seen: set[str] = set()
    todo = [stage_file]
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        for module in _imported_modules(ROOT / file):
            target = _module_file(module)
            if target is not None:
                todo.append(target)
    return {
        f
        for f in seen
        if f not in PLUMBING
        and not (f.endswith("__init__.py") and not (ROOT / f).read_text().strip(" \n").count("\n") > 2)
    }


def stage_module(stage: dict) -> str:
    match = re.search(r"python -m pipeline (\w+)", stage["cmd"])
    assert match, f"stage command does not start a project stage: {stage['cmd']}"
    return f"pipeline/stages/{match.group(1)}.py"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_lists_exactly_the_project_code_it_runs(name):
    stage = STAGES[name]
    listed = {d for d in stage["deps"] if isinstance(d, str) and d.startswith("pipeline/")}
    needed = project_imports(stage_module(stage))
    assert not needed - listed, f"{name}: add to deps in dvc.yaml: {sorted(needed - listed)}"
    assert not listed - needed, f"{name}: deps in dvc.yaml it does not import: {sorted(listed - needed)}"


@pytest.mark.parametrize("name", ["fetch", "prepare"])
def test_the_data_stages_do_not_depend_on_the_models(name):
    """Editing the layer vocabulary, the model code or the other sections' models reruns training,
    not the download and the preparation of the data."""
    code = project_imports(stage_module(STAGES[name]))
    assert not code & {"pipeline/layers.py", "pipeline/models.py", "pipeline/config.py"}, sorted(code)


def test_the_import_scan_sees_lazy_imports_and_skips_type_checking(tmp_path, monkeypatch):
    """The scan itself: an import inside a function counts, one under TYPE_CHECKING does not."""
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline import figures\n"
        "def f():\n    from pipeline import statistics\n"
    )
    file = tmp_path / "mod.py"
    file.write_text(source)
    found = _imported_modules(file)
    assert "pipeline.statistics" in found
    assert "pipeline.figures" not in found


def _render(template: str, variant: str = "transposed", dataset: str = "mnist") -> str:
    return template.replace("${item.variant}", variant).replace("${data.dataset}", dataset)


def _outputs(stage: dict, kind: str) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o for o in stage.get(kind, [])]


def test_paths_in_dvc_yaml_are_the_layout_of_pipeline_paths():
    assert [_render(o) for o in _outputs(STAGES["fetch"], "outs")] == [str(paths.raw_dir("mnist"))]
    assert [_render(o) for o in _outputs(STAGES["prepare"], "outs")] == [str(paths.prepared_dir("mnist"))]
    assert _render(STAGES["prepare"]["deps"][0]) == str(paths.raw_dir("mnist"))
    train = STAGES["train"]
    # one stage per variant: its outs are the folders that hold every seed's files
    assert list(train["matrix"]) == ["variant"]
    models, metrics, plots = (_render(o) for o in _outputs(train, "outs"))
    assert models == str(paths.model_dir("transposed", 7).parent)
    assert metrics == str(paths.metrics_file("transposed", 7).parent)
    assert plots == str(paths.plots_dir("transposed", 7).parent)
    # per-seed files are plain outputs: compare's reports/summary.json is the only DVC metrics file
    assert "metrics" not in train and "plots" not in train
    assert [next(iter(o)) for o in STAGES["compare"]["metrics"]] == ["reports/summary.json"]
    for name in ("train", "compare"):
        assert str(paths.prepared_dir("mnist")) in [_render(d) for d in STAGES[name]["deps"]], name
    assert {paths.MODELS.as_posix(), paths.METRICS.as_posix(), paths.PLOTS.as_posix()} <= set(STAGES["compare"]["deps"])


def test_the_train_stage_reruns_on_every_param_it_reads():
    """Every train.* key (the seeds too: the stage trains them all) and evaluate.batch_size."""
    from pipeline.config import EvaluateConfig, TrainConfig

    listed = set(STAGES["train"]["params"])
    assert {f"train.{key}" for key in TrainConfig.model_fields} <= listed
    assert {f"evaluate.{key}" for key in EvaluateConfig.model_fields} <= listed
    assert "variants.${item.variant}" in listed
