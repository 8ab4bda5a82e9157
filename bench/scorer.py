"""Seconds to score one BraTS case with the scorer (`python src/evaluate.py --pred --gt --out`).

    python bench/scorer.py                    # a 240 x 240 x 155 case, median of --repeats runs
    python bench/scorer.py --grid 182 218 182

The ground truth is a synthetic case (src/synthesize.py) on the given 1 mm grid; the prediction is it
with the usual errors of a model: oedema grown by a voxel, the enhancing rim shifted, part of the core
called the wrong tissue, and a dozen small spurious blobs (which the official rules delete or count as
false positives). Times `evaluate.score_folders` on the written files: reading both NIfTI files and
every metric of every region. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from evaluate import score_folders  # noqa: E402
from nifti import write_nifti  # noqa: E402
from synthesize import make_case  # noqa: E402

CASE = "BraTS-GLI-00001-100"


def imperfect(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pred = gt.copy()
    pred[ndimage.binary_dilation(gt == 2) & (gt == 0)] = 2            # oedema one voxel too wide
    et = np.roll(gt == 3, 2, axis=0)
    pred[(gt == 3) & ~et] = 1
    pred[et & (gt > 0)] = 3                                           # rim shifted by 2 voxels
    pred[(gt == 1) & (rng.random(gt.shape) < 0.2)] = 3                 # speckle in the core
    for _ in range(12):                                               # small spurious blobs
        c = rng.integers(20, np.array(gt.shape) - 20)
        size = int(rng.integers(1, 5))
        pred[c[0]:c[0] + size, c[1]:c[1] + size, c[2]:c[2] + size] = rng.integers(1, 5)
    return pred


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=int, nargs=3, default=[240, 240, 155])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    _, gt, affine = make_case(2024, 1, 0, tuple(args.grid), 1.0)
    pred = imperfect(gt, rng)
    print(f"CPU, {torch.get_num_threads()} threads; numpy {np.__version__}; grid {tuple(args.grid)}; "
          f"labels {np.bincount(gt.ravel(), minlength=5).tolist()} (ground truth)")
    with tempfile.TemporaryDirectory() as tmp:
        gt_dir, pred_dir = Path(tmp) / "gt", Path(tmp) / "pred"
        write_nifti(gt_dir / CASE / f"{CASE}-seg.nii.gz", gt, affine)
        write_nifti(pred_dir / f"{CASE}.nii.gz", pred, affine)
        times = []
        for _ in range(args.repeats + 1):                              # the first run warms caches
            t = time.perf_counter()
            result = score_folders(pred_dir, gt_dir)
            times.append(time.perf_counter() - t)
    et = result["cases"][CASE]["ET"]
    print(f"scored in {statistics.median(times[1:]):.2f} s (median of {args.repeats}; runs "
          f"{', '.join(f'{t:.2f}' for t in times[1:])}); ET lesion-wise Dice {et['lesionwise_dice']:.3f}, "
          f"tp {et['tp']} fp {et['fp']} fn {et['fn']}")


if __name__ == "__main__":
    main()
