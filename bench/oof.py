"""Out-of-fold choices for bench/real.py: keep each unseen case's region probabilities, then choose the
probability cut-offs and the post-processing on the other folds' cases and score the fold with them.

    python bench/oof.py predict --params WORK/params.yaml --out FOLDER    (run by real.py, per fold)

writes FOLDER/<case>.npz for every case of the test split: the region probabilities on the case's own
grid (float32, as the evaluate stage computes them, with its inference settings), its labels and voxel
size. `choose_and_score` (called by real.py after every fold) then, for each fold k, picks on the
cases of the other folds only (each predicted by a model that did not train on it, so the choice never
sees fold k's labels through its scores):

1. a cut-off per region (WT, TC, ET) from CUTOFFS, region by region, the one with the best mean Dice
   of that region (ties: the one nearest 0.5);
2. the post-processing rules (src/postprocessing.py: small enhancing components become necrosis,
   small or relatively small whole-tumour components go, ...) by postprocessing.select on the cut
   maps, with the stage's candidates and min_gain;

and scores fold k's cases with them. What is chosen per fold is reported beside the scores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

REGIONS3 = ("WT", "TC", "ET")
CUTOFFS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)


def predict(params_file: Path, out: Path) -> None:
    """The test split's probabilities on each case's own grid, one .npz per case (run with the work
    folder's src/ on the path)."""
    import json

    import torch
    from layout import load_manifest, native_labels, native_shape, open_case
    from params import load_params
    from predictor import Predictor, Settings
    from runtime import default_device
    from weights import fold_weights

    params = load_params(params_file)
    paths = params.paths
    device = default_device()
    predictor = Predictor(fold_weights(paths.models_dir, params.train.folds), Settings.of(params.evaluate, device),
                          device)
    manifest = load_manifest(paths.preprocessed_dir)
    cases = json.loads((paths.preprocessed_dir / "splits.json").read_text())["test"]
    out.mkdir(parents=True, exist_ok=True)
    regions = list(predictor.spec.regions)
    for case in cases:
        entry = manifest[case]
        image = open_case(paths.preprocessed_dir, case)[0].read()
        with torch.no_grad():
            probs = predictor.probs(image, native_shape(entry))
        save_case(out / f"{case}.npz", probs.numpy(), regions, native_labels(paths.preprocessed_dir, case, entry),
                  entry["native_spacing_mm"])
        print(f"{case}: probabilities kept", flush=True)


def save_case(path: Path, probs: np.ndarray, regions, labels: np.ndarray, spacing) -> None:
    """One case's probabilities (float32: an undertrained network's values near 0.5 must cut as the
    evaluate stage cuts them), region names, labels and voxel size; written whole or not at all."""
    from files import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, probs=probs.astype(np.float32), regions=np.array(regions), labels=labels,
                                spacing=np.array(spacing, float))
    atomic_write(path, write)


def load_case(path: Path) -> dict:
    with np.load(path) as f:
        return {"probs": f["probs"], "regions": tuple(str(r) for r in f["regions"]), "labels": f["labels"],
                "spacing": tuple(float(s) for s in f["spacing"])}


def cut(case: dict, cutoffs: dict[str, float]) -> np.ndarray:
    """The label map of a case's probabilities under per-region cut-offs (brats.PAINT order)."""
    from brats import PAINT, regions_to_labels
    masks = np.stack([case["probs"][i].astype(np.float32) > cutoffs.get(r, 0.5)
                      for i, r in enumerate(case["regions"])])
    return regions_to_labels(masks, PAINT)


def choose_cutoffs(cases: list[dict]) -> dict[str, float]:
    """Per region, the cut-off of CUTOFFS with the best mean Dice of that region over `cases`."""
    from brats import region_mask
    from metrics import dice
    chosen = {}
    for region in REGIONS3:
        scores = {}
        for c in CUTOFFS:
            values = []
            for case in cases:
                i = case["regions"].index(region)
                values.append(dice(case["probs"][i].astype(np.float32) > c, region_mask(case["labels"], region)))
            scores[c] = float(np.mean(values))
        best = max(scores.values())
        chosen[region] = min((c for c, s in scores.items() if s >= best - 1e-12), key=lambda c: abs(c - 0.5))
    return chosen


def choose(cases: list[dict], candidates: tuple[float, ...], fractions: tuple[float, ...],
           min_gain: float) -> tuple[dict[str, float], "Postprocessing", dict]:
    """Cut-offs, then the post-processing rules on the cut maps, chosen on `cases`; and what was
    chosen, as the result file records it."""
    import postprocessing
    cutoffs = choose_cutoffs(cases)
    pp, record = postprocessing.select([(cut(c, cutoffs), c["labels"], c["spacing"]) for c in cases],
                                       candidates, fractions, min_gain)
    return cutoffs, pp, {"cutoffs": cutoffs, "postprocessing": {r: v for r, v in pp.min_mm3.items() if v},
                         "chosen_on": len(cases), "oof_lesionwise_before": record["before"],
                         "oof_lesionwise_after": record["after"]}


def choose_and_score(prob_dir: Path, fold_of: dict[str, int], candidates: tuple[float, ...] = (),
                     fractions: tuple[float, ...] = (), min_gain: float = 0.0, choose_too: bool = True) -> dict:
    """Every case scored plain (cut at 0.5, no post-processing) and, with `choose_too`, with the
    cut-offs chosen on the other folds' cases (`cutoffs`) and with those and the rules (`chosen`)."""
    import postprocessing
    from metrics import case_scores

    cases = {name: load_case(prob_dir / f"{name}.npz") for name in sorted(fold_of)}
    chosen, per_case = {}, {}
    for k in sorted(set(fold_of.values())):
        others = [cases[n] for n, f in fold_of.items() if f != k]
        if choose_too and others:
            cutoffs, pp, chosen[str(k)] = choose(others, candidates, fractions, min_gain)
            print(f"fold {k}: cut-offs {cutoffs}, post-processing {chosen[str(k)]['postprocessing'] or 'none'} "
                  f"(chosen on {len(others)} out-of-fold cases)", flush=True)
        for name in (n for n, f in fold_of.items() if f == k):
            case = cases[name]
            variants = {"plain": cut(case, {})}
            if str(k) in chosen:
                variants["cutoffs"] = cut(case, cutoffs)
                variants["chosen"] = postprocessing.apply(variants["cutoffs"], pp, case["spacing"])
            per_case[name] = {"fold": k}
            for variant, labels in variants.items():
                scores = case_scores(labels, case["labels"], case["spacing"], distances=False)
                for r in REGIONS3:
                    per_case[name][f"{variant}_dice_{r}"] = round(float(scores[r]["dice"]), 4)
                    per_case[name][f"{variant}_lesionwise_dice_{r}"] = round(float(scores[r]["lesionwise_dice"]), 4)
    return {"chosen": chosen, "per_case": per_case}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="keep the test split's probabilities")
    p.add_argument("--params", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    sys.path.insert(0, str(args.params.resolve().parent / "src"))
    predict(args.params, args.out)


if __name__ == "__main__":
    main()
