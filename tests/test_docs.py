"""The documentation a newcomer reads: a short README that starts with the two commands, one page per
task under docs/, every internal link and heading anchor resolving, and a project that speaks of itself
only (no work sessions, no issue numbers as explanations)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import ROOT

DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md", *DOCS]
# The pages the documentation promises, one per task or component.
REQUIRED = ("installation", "pipeline", "parameters", "real-data", "experiments", "remote", "cross-validation",
            "predict", "scorer", "synthetic-data", "tracking", "troubleshooting")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*```")


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path.read_text()):
        found = re.match(r"^#{1,6}\s+(.*)$", line)
        if found:
            base = slug(found.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_slug_follows_github():
    assert slug("The CPU recipe: 2 mm, from the synthetic default's weights") == \
        "the-cpu-recipe-2-mm-from-the-synthetic-defaults-weights"
    assert slug("train: the 3D U-Net") == "train-the-3d-u-net"
    assert slug("Scale: BraTS-sized data") == "scale-brats-sized-data"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_internal_link_and_anchor_resolves(page):
    broken = []
    for line in prose(page.read_text()):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):         # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            path = (page.parent / file_part).resolve() if file_part else page
            if not path.exists():
                broken.append(f"{target}: no such file")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{target}: no such heading in {path.relative_to(ROOT)}")
    assert not broken, broken


def test_readme_is_short_starts_with_the_two_commands_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).splitlines()
    assert first_block[0].startswith("pip install -r requirements.txt -c requirements.lock && dvc repro")
    assert first_block[1].startswith("pip install -r requirements-test.txt -c requirements.lock && python -m pytest")
    for name in REQUIRED:
        assert (ROOT / "docs" / f"{name}.md").exists(), name
        assert f"(docs/{name}.md" in readme, f"the README does not link docs/{name}.md"


def project_texts():
    """Documents, code and configuration the project ships."""
    for pattern in ("*.md", "docs/*.md", "src/*.py", "bench/*.py", "bench/*.sh", "tests/*.py", "tools/*",
                    "params.yaml", "dvc.yaml", ".ci/run"):
        for path in sorted(ROOT.glob(pattern)):
            if path.is_file() and path.name != "test_docs.py":
                yield path


def test_the_project_speaks_of_itself_only():
    """No work session and no issue number stands in for an explanation a user can read."""
    said = []
    for path in project_texts():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            text = re.sub(r'scope="session"|session-level|session_level', "", line)
            if re.search(r"\bsessions?\b", text, re.I) or re.search(r"\bissues? #?\d+", text, re.I):
                said.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not said, said
