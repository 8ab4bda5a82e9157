"""The pinned environment: requirements.lock is in step with the pins in requirements*.txt, and
CI and the README install with it."""

from __future__ import annotations

import re

from helpers import ROOT

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;#]+)")


def pins(path) -> dict[str, str]:
    """{normalised name: version} of the `name==version` lines of a requirements file."""
    out = {}
    for line in path.read_text().splitlines():
        m = PIN.match(line.strip())
        if m:
            out[re.sub(r"[-_.]+", "-", m[1]).lower()] = m[2]
    return out


def test_every_direct_pin_is_the_locked_version():
    lock = pins(ROOT / "requirements.lock")
    direct = {**pins(ROOT / "requirements.txt"), **pins(ROOT / "requirements-test.txt")}
    assert direct, "no pins found in requirements*.txt"
    wrong = {name: (version, lock.get(name)) for name, version in direct.items() if lock.get(name) != version}
    assert not wrong, f"requirements.lock is stale (pin, locked): {wrong}; regenerate it with tools/lock.sh"


def test_lock_pins_everything_and_serves_cpu_and_cuda_torch():
    lines = [l for l in (ROOT / "requirements.lock").read_text().splitlines() if l and not l.startswith(("#", " "))]
    assert all(PIN.match(l) for l in lines), [l for l in lines if not PIN.match(l)]   # nothing unpinned
    assert "pandas" in pins(ROOT / "requirements.txt")        # tune's trials table needs it: declared
    torch = pins(ROOT / "requirements.lock")["torch"]
    assert "+" not in torch, "a local build label (+cpu) in the lock would refuse PyTorch's CUDA wheel"
    assert not any(l.startswith("--") for l in lines), "no index or find-links options of one machine"


def test_ci_and_readme_install_with_the_lock():
    assert "-c requirements.lock" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Quick start")
    quick = readme[start:readme.index("\n## ", start + 1)]
    commands = re.findall(r"^pip install .*$", quick, re.M)
    assert commands and all("-c requirements.lock" in c for c in commands), commands
