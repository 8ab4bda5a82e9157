"""dvc.lock describes the committed code and params: `dvc status` finds nothing changed but data
that is simply not here (a clean clone has no data until `dvc pull` or `dvc repro`)."""

from __future__ import annotations

import json
import subprocess

import yaml

from helpers import ROOT



def missing_outputs(dep: str, produced: set[str]) -> bool:
    """True when `dep` is made by other stages (it is one of their outputs, or a folder that holds only
    their outputs, such as models/folds) and none of those outputs is here: a clean clone before `dvc pull`.
    Git may keep such a folder (its .gitignore), so DVC calls it modified rather than deleted."""
    made = [out for out in produced if out == dep or out.startswith(dep.rstrip("/") + "/")]
    return bool(made) and not any((ROOT / out).exists() for out in made)


def test_lock_matches_code_and_params():
    done = subprocess.run(["dvc", "status", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout or "{}")
    listed = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    stages = set(listed.stdout.split())          # matrix stages expanded: train@0, ...
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    assert "train@0" in stages and set(lock) == stages, "a stage of dvc.yaml has never been run into dvc.lock"
    produced = {o["path"] for s in lock.values() for o in s.get("outs", [])}
    problems = []
    for stage, changes in status.items():
        for change in changes:
            if not isinstance(change, dict):
                problems.append(f"{stage}: {change}")
                continue
            for kind in ("changed command", "changed params"):
                if kind in change:
                    problems.append(f"{stage}: {kind} {change[kind]}")
            for path, state in change.get("changed deps", {}).items():
                # missing data made by another stage is fine; changed code or inputs are not
                if not (state in ("deleted", "modified") and missing_outputs(path, produced)):
                    problems.append(f"{stage}: dep {path} {state}")
    assert not problems, "dvc.lock is stale; run `dvc repro` and commit dvc.lock:\n" + "\n".join(problems)
