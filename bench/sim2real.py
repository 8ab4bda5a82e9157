"""How far what the embedded synthetic set teaches carries to real MRI: score a model on
real cases, and compare the real cases' statistics with the synthetic ones'.

    python bench/sim2real.py --data REAL_DIR [--weights models] [--synthetic data/synthetic]
                             [--out bench/results/sim2real.json] [--work /tmp/sim2real] [--plot FILE.png]
                             [--params params.yaml] [--no-score]
    python bench/sim2real.py --data REAL_DIR --seeds 2024 1 2 --work /tmp/sim2real [-S key=value ...]
                             [--development 2013 TCIA01 ...] [--cutoffs 0.6 0.7 ...] [--reuse] [--jobs N]
                             [--out FILE]
    python bench/sim2real.py --train-only --seeds 2024 1 2 --work /tmp/sim2real [-S ...] [--jobs N]

REAL_DIR: real cases with their labels, in any layout the pipeline reads (src/editions.py). Nothing is
downloaded and nothing is fitted to them: they are read in place, only to measure.

Score: `predict.py` with the evaluate stage's settings (params.yaml: overlap, mirroring, compile) and
the post-processing beside the weights; each case is resampled to the weights' spacing, predicted,
brought back to its own grid and scored there against its own labels by the evaluate stage's scorer
(`evaluate.score_folders`: Dice, IoU, lesion-wise Dice per region), and how its whole tumour errs,
as shares of the expert's volume: `volume_ratio_WT` (1: the expert's volume), `false_share_WT` (the
predicted part outside the expert's) and `missed_share_WT`; and where in the head the false part lies:
`false_low_share_WT`, the share of it in the lowest third of the head's height. The targets are checked:
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

With `--seeds`, the model is not given but trained once per seed, as `dvc repro` trains the default
(synthesize, preprocess, train, postprocess and evaluate in WORK/seed-S, a copy of `src/` and
params.yaml with the committed tuned optimizer values, then the `-S` overrides): each seed S sets
`base.seed` (the synthetic set and its split) and `train.seed` (initial weights, patches). Every seed's
model is scored as above; the result adds the mean ± sd over the seeds' means, the seed-averaged
per-case scores with their interval and per-institution means (bench/report.py's pool), each seed's
IoU on its own synthetic test split (`synthetic_test`: what `dvc repro` would report), and, when
`--development` names institutions, the same split in two: the institutions generator candidates are
chosen on, and the rest, which confirm. `--cutoffs` (with `--development`) also keeps each case's
region probabilities (predict.py's `--save-probabilities`) and scores WT, TC and ET at each cut-off,
before post-processing; each region's cut-off is chosen on the development institutions (mean Dice
over their cases and the seeds) and its change against 0.5 reported on the rest, paired over the
seeds' per-case Dice with its 95 % interval, and per institution. `--reuse` keeps a seed whose
model a former run into the same WORK finished. `--jobs N` trains N seeds at once (each its own
processes; on a GPU machine with cores to spare). `--train-only` trains and stops, without `--data`:
train on a machine without the real cases, copy WORK's seed folders back, then score them with
`--reuse`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.append(str(ROOT / "bench"))   # report.py, when loaded as a module; after src/, which bench/inference.py must not shadow

from brats import MODALITIES  # noqa: E402
from editions import find_cases  # noqa: E402
from files import write_json  # noqa: E402
from nifti import read_case  # noqa: E402
from params import load_params  # noqa: E402
from prepare import prepare, zscore  # noqa: E402
from report import institution, pool  # noqa: E402
from report import summarise as summarise_scores  # noqa: E402
import real  # noqa: E402

CUTOFF_REGIONS = ("WT", "TC", "ET")
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


def whole_tumour_volumes(pred: np.ndarray, gt: np.ndarray, low: np.ndarray | None = None) -> dict[str, float]:
    """How a prediction's whole tumour errs, as shares of the expert's: its volume (1 is the expert's),
    the part outside the expert's (false positive) and the part of the expert's it misses. A case the
    expert marked no tumour in counts as one voxel of it, so its shares are voxel counts. With `low`
    (a mask: the lowest third of the head, `lowest_third`), also the share of the false part that lies
    there (`false_low_share_WT`; 0 without a false part)."""
    p, g = pred > 0, gt > 0
    n = max(int(g.sum()), 1)
    false = p & ~g
    out = {"volume_ratio_WT": round(float(p.sum() / n), 4), "false_share_WT": round(float(false.sum() / n), 4),
           "missed_share_WT": round(float((g & ~p).sum() / n), 4)}
    if low is not None:
        out["false_low_share_WT"] = round(float((false & low).sum() / max(int(false.sum()), 1)), 4)
    return out


def lowest_third(head: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The voxels in the lowest third of the head's height: along the array axis nearest the
    scanner's superior axis (from the affine; either direction), the first third of the slabs the
    head spans from its bottom."""
    axis = int(np.argmax(np.abs(affine[2, :3])))
    held = np.nonzero(head.any(axis=tuple(a for a in range(3) if a != axis)))[0]
    lo, hi = int(held.min()), int(held.max()) + 1
    index = np.arange(head.shape[axis])
    low = index < lo + (hi - lo) / 3 if affine[2, axis] > 0 else index >= hi - (hi - lo) / 3
    shape = [1, 1, 1]
    shape[axis] = -1
    return np.broadcast_to(low.reshape(shape), head.shape)


def heads(data: Path) -> dict:
    """{case: the voxels non-zero in any modality} of the case folders of `data` ({} for a folder of
    label files alone)."""
    from errors import UserError
    try:
        cases = find_cases(data, "").cases
    except UserError:
        return {}
    return {c.name: read_case(c, with_seg=False).images.any(axis=0) for c in cases}


def cutoff_dice(probs_file: Path, gt: np.ndarray, cutoffs: tuple[float, ...]) -> dict[str, dict[str, float]]:
    """{region: {cut-off: Dice}} for WT, TC and ET: each region's probability (predict.py's
    --save-probabilities, before post-processing) above the cut-off against the expert's region."""
    from brats import region_mask
    from metrics import dice
    with np.load(probs_file) as f:
        probs, regions = f["probabilities"], [str(r) for r in f["regions"]]
    out = {}
    for region in CUTOFF_REGIONS:
        expert = region_mask(gt, region)
        p = probs[regions.index(region)]
        out[region] = {}
        for c in cutoffs:
            out[region][f"{c:g}"] = round(dice(p > c * 255, expert), 4)     # uint8 probabilities: value / 255
    return out


def _best_cutoff(dice: dict[str, np.ndarray], idx: list[int]) -> tuple[str, dict[str, float]]:
    """The cut-off with the best mean Dice over the cases `idx` (and the seeds, the rows of each
    `dice` array), ties going to the one nearest 0.5; and every cut-off's mean."""
    means = {c: float(d[:, idx].mean()) for c, d in dice.items()}
    best = max(means.values())
    return min((c for c, v in means.items() if v >= best - 1e-12), key=lambda c: abs(float(c) - 0.5)), means


def _judged(at_half: np.ndarray, at_cut: np.ndarray, cases: list[str]) -> dict:
    """The paired change from 0.5 to a cut-off over (seeds, cases) Dice, with per-institution means."""
    from stats import paired
    diff = paired(at_half, at_cut, matched=True)      # the same models, cut two ways
    sites: dict[str, list[int]] = {}
    for i, case in enumerate(cases):
        sites.setdefault(institution(case), []).append(i)
    return {"cases": len(cases), "at_0.5": round(diff.baseline, 4), "at_chosen": round(diff.candidate, 4),
            "change": round(diff.change, 4),
            "ci95": None if diff.judged_on is None else [round(v, 4) for v in diff.judged_on],
            "verdict": diff.verdict,
            "institutions": {site: {"cases": len(i), "at_0.5": round(float(at_half[:, i].mean()), 4),
                                    "at_chosen": round(float(at_cut[:, i].mean()), 4)}
                             for site, i in sorted(sites.items())}}


def choose_cutoffs(runs: dict[str, dict[str, dict]], development: list[str]) -> dict:
    """Per region, the cut-off with the best mean Dice over the development institutions' cases,
    averaged over the seeds (ties: the one nearest 0.5), and what it does on the other institutions'
    cases against 0.5 (`confirmation`): the paired change over the seeds' per-case Dice (src/stats.py:
    95 % interval over cases, widened by the spread of the seeds' own changes), the seed-averaged mean and per-institution
    means at both. `institution_out` chooses once per institution on all the others and judges each
    case at the cut-off chosen without its institution, so all cases are judged on a choice they took
    no part in. `runs`: {seed: {case: {region: {cut-off: Dice}}}}, every seed with the same cases and
    cut-offs."""
    seeds = sorted(runs)
    cases = sorted(runs[seeds[0]])
    sites = sorted({institution(c) for c in cases})
    dev = [i for i, c in enumerate(cases) if institution(c) in development]
    rest = [i for i, c in enumerate(cases) if institution(c) not in development]
    out = {}
    for region in CUTOFF_REGIONS:
        cuts = list(runs[seeds[0]][cases[0]][region])
        dice = {c: np.array([[runs[s][case][region][c] for case in cases] for s in seeds]) for c in cuts}
        chosen, on_dev = _best_cutoff(dice, dev)
        own = {s: float(_best_cutoff({c: d[[seeds.index(s)]] for c, d in dice.items()}, dev)[0]) for s in seeds}
        entry = {"chosen": float(chosen), "development_dice": {c: round(v, 4) for c, v in on_dev.items()},
                 "each_seed_would_choose": own}
        if rest:
            entry["confirmation"] = _judged(dice["0.5"][:, rest], dice[chosen][:, rest], [cases[i] for i in rest])
        if len(sites) > 1:
            held = np.empty_like(dice["0.5"])
            picks = {}
            for site in sites:
                inside = [i for i, c in enumerate(cases) if institution(c) == site]
                pick = _best_cutoff(dice, [i for i in range(len(cases)) if i not in inside])[0]
                picks[site] = float(pick)
                held[:, inside] = dice[pick][:, inside]
            entry["institution_out"] = {"chosen": picks, **_judged(dice["0.5"], held, cases)}
        out[region] = entry
    return out


def change_line(judged: dict) -> str:
    """`Dice 0.612 at 0.5 -> 0.655 (+0.043, 95 % +0.010 to +0.077: better)` for a `_judged` entry."""
    ci = judged["ci95"]
    interval = "-" if ci is None else f"{ci[0]:+.3f} to {ci[1]:+.3f}"
    return (f"Dice {judged['at_0.5']:.3f} at 0.5 -> {judged['at_chosen']:.3f} "
            f"({judged['change']:+.3f}, 95 % {interval}: {judged['verdict']})")


def score(data: Path, weights: Path, work: Path, params: Path, cutoffs: tuple[float, ...] = ()) -> dict:
    """predict.py on every case of `data` with the evaluate stage's settings, scored by the evaluate
    stage's scorer on each case's own grid; with `cutoffs`, also each region's Dice at each
    probability cut-off (`cutoff_dice`, before post-processing)."""
    import evaluate
    import predict
    pred = work / "predictions"
    started = time.perf_counter()
    if predict.main(["--weights", str(weights), "--input", str(data), "--output", str(pred),
                     "--params", str(params)] + (["--save-probabilities"] if cutoffs else [])) != 0:
        raise SystemExit("error: predict.py failed on some case (see above)")
    seconds = time.perf_counter() - started
    scored = evaluate.score_folders(pred, data)
    per_case = {case: {f"{k}_{r}": round(float(s[r][k]), 4) for r in ("WT", "TC", "ET", "SNFH", "NETC")
                       for k in ("dice", "iou", "lesionwise_dice")} for case, s in scored["cases"].items()}
    at_cutoffs = {}
    head = heads(data)
    for case, (gt_path, edition) in evaluate.ground_truths(data).items():
        gt, affine = evaluate.load_labels(gt_path, case, edition)
        low = lowest_third(head[case], affine) if case in head else None
        per_case[case].update(whole_tumour_volumes(evaluate.load_labels(pred / f"{case}.nii.gz", case)[0], gt, low))
        if cutoffs:
            at_cutoffs[case] = cutoff_dice(pred / f"{case}.probs.npz", gt, cutoffs)
    summary = summarise_scores(per_case)    # means, 95 % intervals over cases, per-institution means
    mean = summary["mean"]
    wt = [c["dice_WT"] for c in per_case.values()]
    reached = {"WT dice": mean["dice_WT"], "TC dice": mean["dice_TC"], "min case WT dice": min(wt)}
    return {"per_case": per_case, **summary, "predict_seconds": round(seconds, 1),
            **({"cutoff_dice": at_cutoffs} if cutoffs else {}),
            "targets": {k: {"target": TARGETS[k], "measured": round(v, 4), "met": v >= TARGETS[k]}
                        for k, v in reached.items()}}


def train_seed(work: Path, seed: int, overrides: dict, reuse: bool) -> tuple[Path, float]:
    """The default pipeline's model for one seed, trained in WORK/seed-S; the model folder and minutes."""
    folder = work / f"seed-{seed}"
    done = folder / "trained"
    if reuse and done.exists():
        return folder, 0.0
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    real.checkout(folder, {**real.QUIET, **overrides, "base.seed": seed, "train.seed": seed})
    load_params(folder / "params.yaml")           # checks the overrides before any work
    if (ROOT / "tune").is_dir():                  # lr etc. `tuned`: the committed tune stage's values
        shutil.copytree(ROOT / "tune", folder / "tune")
    minutes = sum(real.run([sys.executable, f"src/{stage}.py"], folder, folder / "bench.log")
                  for stage in ("synthesize", "preprocess", "train", "postprocess", "evaluate"))
    done.write_text(f"{minutes:.2f}\n")
    return folder, minutes


def train_seeds(args: argparse.Namespace) -> dict[int, tuple[Path, float]]:
    """train_seed for every seed, `args.jobs` at a time; a seed that fails stops the bench."""
    overrides = dict(args.overrides)
    pool = ThreadPoolExecutor(max_workers=args.jobs)
    running = {seed: pool.submit(train_seed, args.work, seed, overrides, args.reuse) for seed in args.seeds}
    trained = {}
    try:
        for seed, job in running.items():
            trained[seed] = job.result()
            print(f"seed {seed}: trained in {trained[seed][1]:.1f} min", flush=True)
    except BaseException as failed:
        pool.shutdown(wait=False, cancel_futures=True)
        if isinstance(failed, SystemExit) and isinstance(failed.code, str):
            print(failed.code, file=sys.stderr, flush=True)   # now, once: the seeds running finish their stage first
            raise SystemExit(1) from None
        raise
    pool.shutdown()
    return trained


def flatten(raw: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} as {"a.b": 1}, the keys -S takes."""
    out = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def trained_with(folder: Path) -> dict:
    """The params a seed's model was trained with that differ from the repository's params.yaml, the
    seeds aside: with --reuse, what the command line's -S no longer says."""
    ours = flatten(yaml.safe_load((ROOT / "params.yaml").read_text()))
    theirs = flatten(yaml.safe_load((folder / "params.yaml").read_text()))
    return {k: v for k, v in sorted(theirs.items())
            if ours.get(k, object()) != v and k not in ("base.seed", "train.seed")}


def synthetic_test(folders: dict[int, Path]) -> dict | None:
    """Each seed's IoU on its own synthetic test split (its evaluate stage), and mean ± sd over seeds;
    None when a seed's folder has no evaluate figures (trained before the evaluate stage was run)."""
    per_seed = {}
    for seed, folder in folders.items():
        path = folder / "metrics" / "evaluate.json"
        if not path.exists():
            return None
        figures = json.loads(path.read_text())
        per_seed[str(seed)] = {f"iou_{r}": figures["iou"][r] for r in ("WT", "TC", "ET")}
    keys = next(iter(per_seed.values()))
    return {"per_seed": per_seed,
            "mean": {k: round(float(np.mean([s[k] for s in per_seed.values()])), 4) for k in keys},
            "sd": {k: round(float(np.std([s[k] for s in per_seed.values()], ddof=1)), 4) if len(per_seed) > 1
                   else None for k in keys}}


def split_by_institution(per_case: dict[str, dict], development: list[str]) -> dict:
    """summarise() of the development institutions' cases and of the rest's."""
    dev = {c: s for c, s in per_case.items() if institution(c) in development}
    rest = {c: s for c, s in per_case.items() if institution(c) not in development}
    return {"institutions": sorted(development),
            "development": summarise_scores(dev) if dev else None,
            "confirmation": summarise_scores(rest) if rest else None}


def seeds(args: argparse.Namespace) -> dict:
    """Train and score the default pipeline's model once per seed; pooled figures."""
    trained = train_seeds(args)
    minutes = {seed: m for seed, (_, m) in trained.items()}
    folders = {seed: folder for seed, (folder, _) in trained.items()}
    out = {"seeds": args.seeds, "overrides": dict(args.overrides), "train_minutes": minutes,
           "trained_with": {str(seed): trained_with(folder) for seed, folder in folders.items()},
           "synthetic_test": synthetic_test(folders)}
    if args.train_only:
        return out
    runs, at_cutoffs = {}, {}
    for seed, (folder, _) in trained.items():
        print(f"seed {seed}: scoring on {args.data}")
        scored = score(args.data, folder / "models", folder, folder / "params.yaml", args.cutoffs)
        runs[str(seed)] = scored["per_case"]
        at_cutoffs[str(seed)] = scored.get("cutoff_dice")
        write_json(args.work / f"seed-{seed}" / "score.json", scored)
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in scored["mean"].items()
                                           if k in ("dice_WT", "dice_TC", "dice_ET")))
    pooled = pool(runs)
    averaged = {c: {k: float(np.mean([runs[s][c][k] for s in runs])) for k in runs[str(args.seeds[0])][c]}
                for c in runs[str(args.seeds[0])]}
    out.update(pooled)
    if args.development:
        out["split"] = split_by_institution(averaged, args.development)
        for part in ("development", "confirmation"):
            seed_means = [float(np.mean([runs[s][c]["dice_WT"] for c in runs[s]
                                         if (institution(c) in args.development) == (part == "development")]))
                          for s in runs]
            if out["split"][part]:
                out["split"][part]["seed_means_dice_WT"] = [round(m, 4) for m in seed_means]
        if args.cutoffs:
            out["cutoffs"] = choose_cutoffs(at_cutoffs, args.development)
    return out


def institution_line(site: str, f: dict) -> str:
    """One institution's means: Dice per region and how its whole tumours err."""
    return (f"  {site} ({f['cases']} cases): WT Dice {f['dice_WT']:.3f}, TC {f['dice_TC']:.3f}, ET {f['dice_ET']:.3f}; "
            f"WT volume {f['volume_ratio_WT']:.2f} x the expert's, {f['false_share_WT']:.2f} of it outside"
            + (f" ({f['false_low_share_WT']:.2f} of that in the lowest third of the head)" if "false_low_share_WT" in f else ""))


def plot(real_cases: dict[str, dict], synthetic: dict[str, dict], path: Path) -> None:
    """Per modality: the per-case median z-score of each tissue, real beside synthetic."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(MODALITIES), figsize=(4 * len(MODALITIES), 3.5), sharey=True)
    for ax, name in zip(axes, MODALITIES):
        for offset, (label, cases, colour) in enumerate((("real", real_cases, "tab:blue"),
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
    ap.add_argument("--data", type=Path, help="real cases with labels, any BraTS edition's layout")
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
    ap.add_argument("--seeds", type=int, nargs="+", help="train the default pipeline's model once per seed "
                    "(base.seed and train.seed) in WORK/seed-S, instead of scoring --weights")
    ap.add_argument("-S", dest="overrides", type=real.parse_override, action="append", default=[],
                    help="with --seeds: params override for training, as dvc exp run -S takes it (repeatable)")
    ap.add_argument("--development", nargs="+", default=[],
                    help="with --seeds: institutions (2013, CBICA, TCIA01 ...) candidates are chosen on; "
                    "the rest confirm")
    ap.add_argument("--cutoffs", type=float, nargs="+", default=(),
                    help="with --seeds and --development: probability cut-offs to choose each region's from on "
                    "the development institutions (0.5 is always one)")
    ap.add_argument("--reuse", action="store_true", help="with --seeds: keep seeds a former run into WORK trained")
    ap.add_argument("--jobs", type=int, default=1, help="with --seeds: seeds trained at once (default 1)")
    ap.add_argument("--train-only", action="store_true",
                    help="with --seeds: train (and evaluate on the synthetic test split) only; score later with --reuse")
    args = ap.parse_args()
    if args.train_only and not args.seeds:
        ap.error("--train-only needs --seeds")
    if args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: give 1 or more")
    if args.cutoffs:
        if not (args.seeds and args.development) or args.train_only:
            ap.error("--cutoffs needs --seeds and --development (the cut-off is chosen on the development "
                     "institutions), and scoring (not --train-only)")
        bad = [c for c in args.cutoffs if not 0 < c < 1]
        if bad:
            ap.error(f"--cutoffs {' '.join(f'{c:g}' for c in bad)}: give probabilities between 0 and 1")
        args.cutoffs = tuple(sorted(set(args.cutoffs) | {0.5}))
    if args.data is None and not args.train_only:
        ap.error("--data is needed (a folder of real cases with labels), except with --seeds ... --train-only")
    if args.seeds:
        if args.work is None:
            ap.error("--seeds needs --work (a folder for each seed's pipeline)")
        if not args.train_only:
            if not args.data.is_dir():
                ap.error(f"--data {args.data}: not a folder")
            sites = {institution(c.name) for c in find_cases(args.data, "give a folder of cases with labels").cases}
            unknown = sorted(set(args.development) - sites)
            if unknown:
                ap.error(f"--development {' '.join(unknown)}: no case of {args.data} comes from it; "
                         f"its institutions: {' '.join(sorted(sites))}")
        args.work.mkdir(parents=True, exist_ok=True)
        result = {"data": None if args.data is None else str(args.data), **seeds(args)}
        write_json(args.out, result)
        test = result["synthetic_test"]
        if test:
            print("synthetic test IoU (each seed's own test split): " + ", ".join(
                f"{k[4:]} {m:.3f} ± {test['sd'][k] or 0:.3f}" for k, m in test["mean"].items()))
        if args.train_only:
            print(f"wrote {args.out}")
            return
        for k, m in result["seed_mean"].items():
            if k.startswith("dice_") and k[5:] in ("WT", "TC", "ET"):
                ci = result["pooled"]["ci95"][k]
                print(f"{k}: {m:.3f} ± {result['seed_sd'][k] or 0:.3f} over {len(args.seeds)} seeds; "
                      f"seed-averaged cases {ci[0]:.3f}–{ci[1]:.3f}")
        for site, f in result["pooled"]["institutions"].items():
            print(institution_line(site, f))
        for part in ("development", "confirmation"):
            figures = (result.get("split") or {}).get(part)
            if figures:
                print(f"{part}: WT Dice {figures['mean']['dice_WT']:.3f} ({figures['ci95']['dice_WT']}), "
                      f"TC {figures['mean']['dice_TC']:.3f}, per seed WT {figures['seed_means_dice_WT']}")
        for region, entry in (result.get("cutoffs") or {}).items():
            print(f"{region} cut-off chosen on the development institutions: {entry['chosen']:g}")
            if entry.get("confirmation"):
                print(f"  on the other {entry['confirmation']['cases']} cases: {change_line(entry['confirmation'])}")
            if entry.get("institution_out"):
                picks = ", ".join(f"{k} {v:g}" for k, v in entry["institution_out"]["chosen"].items())
                print(f"  each institution at the cut-off chosen on the others ({picks}): "
                      f"{change_line(entry['institution_out'])}")
        print(f"wrote {args.out}")
        return
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
    real_stats, synthetic = statistics_of(args.data), statistics_of(args.synthetic)
    result["statistics"] = {"real": summarise(real_stats), "synthetic": summarise(synthetic),
                            "cases": {"real": len(real_stats), "synthetic": len(synthetic)}}
    result["per_case_statistics"] = {"real": real_stats, "synthetic": synthetic}
    if args.plot:
        plot(real_stats, synthetic, args.plot)
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
            print(institution_line(site, figures))


if __name__ == "__main__":
    from errors import run_stage
    # a missing weights file or a bad case: one line, no traceback; Ctrl-C: what a rerun does
    run_stage(main, "the seeds that finished are kept: run it again with --reuse to score them without "
              "retraining (a seed cut off is trained again from the start)")
