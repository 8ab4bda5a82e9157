"""How far what the embedded synthetic set teaches carries to real MRI: score a model on
real cases, and compare the real cases' statistics with the synthetic ones'.

    python bench/sim2real.py --data REAL_DIR [--weights models] [--synthetic data/synthetic]
                             [--out bench/results/sim2real.json] [--work /tmp/sim2real] [--plot FILE.png]
                             [--params params.yaml] [--no-score]

REAL_DIR: real cases with their labels, in any layout the pipeline reads (src/editions.py). Nothing is
downloaded and nothing is fitted to them: they are read in place, only to measure.

Score: `predict.py` with the evaluate stage's settings (params.yaml: overlap, mirroring, compile) and
the post-processing beside the weights; each case is resampled to the weights' spacing, predicted,
brought back to its own grid and scored there against its own labels by the evaluate stage's scorer
(`evaluate.score_folders`: Dice, IoU, lesion-wise Dice per region). The targets are checked:
mean WT Dice >= 0.75, TC Dice >= 0.65, no case's WT Dice below 0.40.

Statistics, per case, for the real and the synthetic cases (median and quartiles in the output):
the head (brain volume in cm³: voxels non-zero in any modality; extent of its box in mm), the tumour
(WT, TC, ET volumes in cm³, oedema/core volume ratio SNFH / TC, number of WT components, 26-connected,
of at least 0.1 cm³) and the intensities: each modality z-scored over the head (as preprocess does),
its quartiles inside healthy tissue (head minus WT), oedema (SNFH), enhancing tumour (ET) and
necrosis (NETC). Distance to the ventricles is not measured: real BraTS cases carry no ventricle
label. Two more, on each case as preprocess prepares it at the 2 mm the default trains at: the
texture (std of the high-pass, z minus its Gaussian blur of σ 1 voxel, inside the head eroded by 3
voxels) of healthy tissue and of oedema, and the height profile (median z of healthy tissue in 8
slabs of the head from bottom to top). `--plot` draws the per-modality intensity comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))   # report.py, when this file is loaded as a module

from brats import MODALITIES  # noqa: E402
from editions import find_cases  # noqa: E402
from nifti import read_case  # noqa: E402
from prepare import prepare, zscore  # noqa: E402
from report import summarise as summarise_scores  # noqa: E402

TARGETS = {"WT dice": 0.75, "TC dice": 0.65, "min case WT dice": 0.40}
TISSUES = ("healthy", "SNFH", "ET", "NETC")
MIN_COMPONENT_CM3 = 0.1
TEXTURE_SPACING_MM = 2.0
PROFILE_SLABS = 8


def texture(z: np.ndarray, head: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Std of z's high-pass (z minus its Gaussian blur, σ 1 voxel) in each mask, away from the
    head's edge (3 voxels), where the brain's own fine structure is, not its outline."""
    inner = ndimage.binary_erosion(head, iterations=3)
    high = z - ndimage.gaussian_filter(z, 1.0)
    return {name: (round(float(high[inner & m].std()), 3) if (inner & m).sum() > 50 else None)
            for name, m in masks.items()}


def height_profile(z: np.ndarray, head: np.ndarray, healthy: np.ndarray) -> list[float | None]:
    """Median z of healthy tissue in PROFILE_SLABS slabs of the head's height (last axis, bottom first)."""
    slices = np.flatnonzero(head.any(axis=(0, 1)))
    edges = np.rint(np.linspace(slices[0], slices[-1] + 1, PROFILE_SLABS + 1)).astype(int)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        values = z[:, :, lo:hi][healthy[:, :, lo:hi]]
        out.append(round(float(np.median(values)), 3) if values.size else None)
    return out


def quartiles(values: list, digits: int = 3) -> list[float] | None:
    return np.percentile(values, [25, 50, 75]).round(digits).tolist() if len(values) else None


def case_statistics(case) -> dict:
    """The head, tumour and intensity statistics of one case (labels in the 2024 meaning)."""
    raw = read_case(case, with_seg=True)
    voxel_cm3 = abs(np.linalg.det(raw.affine[:3, :3])) / 1000.0
    spacing = np.sqrt((raw.affine[:3, :3] ** 2).sum(axis=0))
    head = (raw.images != 0).any(axis=0)
    seg = raw.seg
    wt, tc, et = seg > 0, np.isin(seg, (1, 3)), seg == 3
    box = [np.flatnonzero(head.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    components, n = ndimage.label(wt, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(components.ravel())[1:] * voxel_cm3
    stats = {"brain_cm3": head.sum() * voxel_cm3,
             "extent_mm": [float((b[-1] - b[0] + 1) * s) if b.size else 0.0 for b, s in zip(box, spacing)],
             "wt_cm3": wt.sum() * voxel_cm3, "tc_cm3": tc.sum() * voxel_cm3, "et_cm3": et.sum() * voxel_cm3,
             "snfh_over_tc": float((seg == 2).sum() / tc.sum()) if tc.any() else None,
             "wt_components": int((sizes >= MIN_COMPONENT_CM3).sum())}
    masks = {"healthy": head & ~wt, "SNFH": seg == 2, "ET": et, "NETC": seg == 1}
    intensity = {}
    z = zscore(raw.images, head)
    for m, name in enumerate(MODALITIES):
        intensity[name] = {t: quartiles(z[m][mask]) for t, mask in masks.items()}
    stats["intensity_z"] = intensity
    # texture and profile as the network sees the case: RAS (bottom to top along the last axis),
    # cropped, at TEXTURE_SPACING_MM and z-scored, by preprocess' own code
    seen = prepare(raw, (TEXTURE_SPACING_MM,) * 3)
    z2 = seen.image.astype(np.float32)
    head2 = (z2 != 0).any(axis=0)
    healthy2 = head2 & (seen.labels == 0)
    stats["texture"] = {name: texture(z2[m], head2, {"healthy": healthy2, "SNFH": seen.labels == 2})
                        for m, name in enumerate(MODALITIES)}
    stats["profile_z"] = {name: height_profile(z2[m], head2, healthy2) for m, name in enumerate(MODALITIES)}
    return {k: (round(float(v), 3) if isinstance(v, (float, np.floating)) else v) for k, v in stats.items()}


def summarise(per_case: dict[str, dict]) -> dict:
    """Median and quartiles of every scalar statistic over the cases, and of the intensity medians."""
    out = {}
    keys = ("brain_cm3", "wt_cm3", "tc_cm3", "et_cm3", "snfh_over_tc", "wt_components")
    for key in keys:
        out[key] = quartiles([c[key] for c in per_case.values() if c[key] is not None])
    for axis in range(3):
        out[f"extent_mm_{'xyz'[axis]}"] = quartiles([c["extent_mm"][axis] for c in per_case.values()], 1)
    for name in MODALITIES:
        for tissue in TISSUES:
            medians = [c["intensity_z"][name][tissue][1] for c in per_case.values()
                       if c["intensity_z"][name][tissue] is not None]
            out[f"z_{name}_{tissue}"] = quartiles(medians)
    for name in MODALITIES:
        for tissue in ("healthy", "SNFH"):
            out[f"texture_{name}_{tissue}"] = quartiles([c["texture"][name][tissue] for c in per_case.values()
                                                         if c["texture"][name][tissue] is not None])
    for name in MODALITIES:
        for slab in range(PROFILE_SLABS):
            out[f"profile_{name}_{slab}"] = quartiles([c["profile_z"][name][slab] for c in per_case.values()
                                                       if c["profile_z"][name][slab] is not None])
    return out


def statistics_of(folder: Path) -> dict[str, dict]:
    listing = find_cases(folder, "give a folder of cases with labels (any BraTS edition)")
    cases = [c for c in listing.cases if c.seg.exists()]
    if not cases:
        raise SystemExit(f"error: no case with labels under {folder}")
    return {c.name: case_statistics(c) for c in cases}


def score(data: Path, weights: Path, work: Path, params: Path) -> dict:
    """predict.py on every case of `data` with the evaluate stage's settings, scored by the evaluate
    stage's scorer on each case's own grid."""
    import evaluate
    import predict
    pred = work / "predictions"
    started = time.perf_counter()
    if predict.main(["--weights", str(weights), "--input", str(data), "--output", str(pred),
                     "--params", str(params)]) != 0:
        raise SystemExit("error: predict.py failed on some case (see above)")
    seconds = time.perf_counter() - started
    scored = evaluate.score_folders(pred, data)
    per_case = {case: {f"{k}_{r}": round(float(s[r][k]), 4) for r in ("WT", "TC", "ET", "SNFH", "NETC")
                       for k in ("dice", "iou", "lesionwise_dice")} for case, s in scored["cases"].items()}
    summary = summarise_scores(per_case)    # means, 95 % intervals over cases, per-institution means
    mean = summary["mean"]
    wt = [c["dice_WT"] for c in per_case.values()]
    reached = {"WT dice": mean["dice_WT"], "TC dice": mean["dice_TC"], "min case WT dice": min(wt)}
    return {"per_case": per_case, **summary, "predict_seconds": round(seconds, 1),
            "targets": {k: {"target": TARGETS[k], "measured": round(v, 4), "met": v >= TARGETS[k]}
                        for k, v in reached.items()}}


def plot(real: dict[str, dict], synthetic: dict[str, dict], path: Path) -> None:
    """Per modality: the per-case median z-score of each tissue, real beside synthetic."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(MODALITIES), figsize=(4 * len(MODALITIES), 3.5), sharey=True)
    for ax, name in zip(axes, MODALITIES):
        for offset, (label, cases, colour) in enumerate((("real", real, "tab:blue"),
                                                         ("synthetic", synthetic, "tab:orange"))):
            data = [[c["intensity_z"][name][t][1] for c in cases.values() if c["intensity_z"][name][t] is not None]
                    for t in TISSUES]
            positions = np.arange(len(TISSUES)) * 3 + offset
            parts = ax.boxplot(data, positions=positions, widths=0.8, patch_artist=True, showfliers=False)
            for box in parts["boxes"]:
                box.set_facecolor(colour)
            ax.plot([], [], color=colour, lw=6, label=label)
        ax.set_xticks(np.arange(len(TISSUES)) * 3 + 0.5, TISSUES)
        ax.set_title(name)
        ax.axhline(0, color="grey", lw=0.5)
    axes[0].set_ylabel("median z-score in the tissue (per case)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="real cases with labels, any BraTS edition's layout")
    ap.add_argument("--weights", type=Path, default=ROOT / "models",
                    help="the model folder (default: the pipeline's) or a weights file, as predict.py takes it")
    ap.add_argument("--synthetic", type=Path, default=ROOT / "data" / "synthetic",
                    help="the synthetic cases to compare with (the synthesize stage's output)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sim2real.json")
    ap.add_argument("--work", type=Path, help="folder for the predictions (default: a temporary one)")
    ap.add_argument("--plot", type=Path, help="PNG of the intensity comparison")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml",
                    help="params.yaml whose evaluate section sets the inference (default: the repository's)")
    ap.add_argument("--no-score", dest="score", action="store_false", help="statistics only")
    args = ap.parse_args()
    for folder in (args.data, args.synthetic):
        if not folder.is_dir():
            raise SystemExit(f"error: {folder} is not a folder")
    result: dict = {"data": str(args.data), "weights": str(args.weights)}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if args.score:
            from weights import read, weights_in
            saved = read(weights_in(args.weights)[0])
            result["weights_spacing_mm"] = saved["inference"]["spacing_mm"]
            result["score"] = score(args.data, args.weights, work, args.params)
    real, synthetic = statistics_of(args.data), statistics_of(args.synthetic)
    result["statistics"] = {"real": summarise(real), "synthetic": summarise(synthetic),
                            "cases": {"real": len(real), "synthetic": len(synthetic)}}
    result["per_case_statistics"] = {"real": real, "synthetic": synthetic}
    if args.plot:
        plot(real, synthetic, args.plot)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"{'statistic':<24}{'real (q25 / median / q75)':>34}{'synthetic':>34}")
    for key, value in result["statistics"]["real"].items():
        fmt = lambda v: " / ".join(f"{x:g}" for x in v) if v else "-"  # noqa: E731
        print(f"{key:<24}{fmt(value):>34}{fmt(result['statistics']['synthetic'][key]):>34}")
    if args.score:
        for name, t in result["score"]["targets"].items():
            print(f"{name}: {t['measured']:.3f} (target {t['target']}: {'met' if t['met'] else 'not met'})")
        print("mean: " + ", ".join(f"{k} {v:.3f}" for k, v in result["score"]["mean"].items() if k.startswith("dice")))
        print("95 % intervals over cases: " + ", ".join(f"{k} {v}" for k, v in result["score"]["ci95"].items()
                                                         if k.startswith("dice")))
        for site, figures in result["score"]["institutions"].items():
            print(f"  {site} ({figures['cases']} cases): WT Dice {figures['dice_WT']:.3f}, TC {figures['dice_TC']:.3f}")


if __name__ == "__main__":
    from errors import run_stage
    run_stage(main)      # a missing weights file or a bad case: one line, no traceback
