"""What the real-data benchmarks (real.py, sim2real.py) report of per-case scores: each mean with its
95 % interval over cases, and the means per institution (a figure that holds on one scanner's cases and
not another's is not a result). Shared by those scripts; not part of the pipeline."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from stats import mean_interval  # noqa: E402

# BraTS 2017-2018 names carry the institution: Brats18_2013_*, Brats18_CBICA_*, Brats18_TCIA01_* ...
SITE = re.compile(r"^Brats1[78]_(2013|CBICA|TCIA\d+)_")


def institution(case: str) -> str:
    """`2013`, `CBICA`, `TCIA01`… for a BraTS 2017-2018 case; `all` for editions whose ids carry none."""
    found = SITE.match(case)
    return found.group(1) if found else "all"


def summarise(per_case: dict[str, dict[str, float]], digits: int = 4) -> dict:
    """{"mean": {key: m}, "ci95": {key: [low, high]}, "institutions": {site: {"cases": n, key: m}}} over
    the numeric keys of the per-case scores."""
    keys = [k for k, v in next(iter(per_case.values())).items() if isinstance(v, float)]
    mean = {k: round(float(np.mean([s[k] for s in per_case.values()])), digits) for k in keys}
    ci = {k: [round(x, digits) for x in mean_interval([s[k] for s in per_case.values()]) or []] or None
          for k in keys}
    sites: dict[str, list[dict]] = {}
    for case, scores in per_case.items():
        sites.setdefault(institution(case), []).append(scores)
    by_site = {site: {"cases": len(rows), **{k: round(float(np.mean([r[k] for r in rows])), digits) for k in keys}}
               for site, rows in sorted(sites.items())}
    return {"mean": mean, "ci95": ci, "institutions": by_site}
