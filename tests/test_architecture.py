"""dvc.yaml is held to the code: each stage's `src/` deps are exactly the files its script imports
(transitively, read with `ast`), and no module imports a stage script, so stages stay leaves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from helpers import ROOT

SRC = ROOT / "src"
STAGE_SCRIPTS = {"synthesize", "preprocess", "tune", "train", "postprocess", "evaluate", "predict", "compare"}


def direct_imports(path: Path) -> set[str]:
    """Names of the src/ modules that a file imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(n.split(".")[0] for n in names if (SRC / f"{n.split('.')[0]}.py").exists())
    return found


def closure(module: str) -> set[str]:
    """`src/<module>.py` and every src/ file it imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(direct_imports(SRC / f"{name}.py"))
    return {f"src/{name}.py" for name in seen}


def stage_script(cmd: str) -> str:
    """`python src/train.py` -> `train`."""
    script = next(word for word in cmd.split() if word.startswith("src/") and word.endswith(".py"))
    return Path(script).stem


def dep_mismatch(cmd: str, deps: list[str]) -> tuple[set[str], set[str]]:
    """(imported but not a dep, a dep but not imported), over src/ files."""
    listed = {d for d in deps if d.startswith("src/")}
    imported = closure(stage_script(cmd))
    return imported - listed, listed - imported


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_are_the_files_its_script_imports(stage):
    missing, extra = dep_mismatch(STAGES[stage]["cmd"], STAGES[stage]["deps"])
    assert not missing, f"{stage}: add to its deps in dvc.yaml: {sorted(missing)}"
    assert not extra, f"{stage}: its script does not import {sorted(extra)}; drop them from its deps"


def test_a_removed_or_stray_dep_is_caught():
    train = STAGES["train"]
    without_fit = [d for d in train["deps"] if d != "src/fit.py"]
    assert dep_mismatch(train["cmd"], without_fit) == ({"src/fit.py"}, set())
    assert dep_mismatch(train["cmd"], train["deps"] + ["src/synthesize.py"]) == (set(), {"src/synthesize.py"})


def test_no_module_imports_a_stage_script():
    offenders = {f"{path.name} imports {sorted(direct_imports(path) & STAGE_SCRIPTS)}"
                 for path in SRC.glob("*.py") if direct_imports(path) & STAGE_SCRIPTS}
    assert not offenders


def test_tune_does_not_depend_on_the_train_stage():
    # an edit to how train writes its outputs must not invalidate hours of tuning
    assert "src/train.py" not in closure("tune")
