"""Must enhancing tumour enhance? The T1c gate (`postprocess.enhancing_min_t1c_z`) on a bench/real.py run's unseen cases.

    python bench/et_gate.py --work /tmp/brats-real --out bench/results/et_gate.json [--gates 0 0.25 ...]
                            [--native /data/BraTS]

On real scans the network paints enhancing tumour where the contrast-enhanced T1 (T1c) is no brighter
than the rest of the head. The pipeline's gate keeps enhancing tumour only where the T1c, z-scored in
the head as the network sees it, is above a value (inference.gate_enhancing). This script measures
what the gate is worth without training anything: bench/real.py keeps each unseen case's region
probabilities (WORK/probabilities, on the case's own grid, not gated); each is gated here with the
case's own network input from the run's store (WORK/data/preprocessed), exactly as predictor.Predictor
gates, cut at 0.5 and scored on the case's own grid (src/metrics.py, as the evaluate stage scores).
What the gate removes keeps the label the other regions give it (necrosis inside the predicted core),
so the whole tumour and the tumour core do not change.

Scored for each gate of --gates and for the gate chosen per fold on the other folds' unseen cases
only (best mean ET Dice; the folds of WORK/folds.json), each against no gate, paired over the cases
(src/stats.py). Writes --out (JSON: per-case ET Dice and lesion-wise Dice per gate, the means with
95 % intervals, the paired changes, the chosen gate per fold, the means per institution) and prints a
table. No component rule is applied: the figures compare with the plain cut of bench/real.py's
`out_of_fold_choice`.

`--native DATA` (the run's --data folder) also gates each case by its T1c at its own grid: the raw scan
prepared as the network's input is, but not resampled (src/prepare.py), so a thin enhancing rim is
judged at 1 mm rather than by a 2 mm T1c interpolated back. Those gates are scored as `native G`, and
each is also compared, paired, with the same gate at the network's grid (`native vs network`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))
sys.path.append(str(BENCH))   # oof.py, report.py; after src/, which bench/inference.py must not shadow

from errors import UserError, run_stage  # noqa: E402

GATES = (0.0, 0.25, 0.5, 0.75, 1.0)
NONE = "none"
NATIVE = "native "


def gate_labels(probs: np.ndarray, regions: tuple[str, ...], image: np.ndarray, gate: float | None) -> np.ndarray:
    """The label map of a case's probabilities cut at 0.5, its enhancing tumour gated at `gate` by the
    T1c of `image` (the network's input) as the pipeline gates it; None: no gate."""
    import torch
    from inference import gate_enhancing, probs_to_labels
    p = torch.from_numpy(np.array(probs, np.float32))
    return probs_to_labels(p if gate is None else gate_enhancing(p, regions, image, gate))


def score_case(probs, regions, labels, spacing, image, gates, native=None) -> dict[str, dict[str, float]]:
    """ET Dice and lesion-wise Dice of one case without a gate, with each of `gates` by the network's
    input `image`, and (when given) by `native`, the case's input on its own grid."""
    from metrics import case_scores
    variants = [(NONE, image, None)] + [(str(g), image, g) for g in gates]
    if native is not None:
        variants += [(f"{NATIVE}{g}", native, g) for g in gates]
    out = {}
    for key, source, gate in variants:
        s = case_scores(gate_labels(probs, regions, source, gate), labels, spacing, distances=False)
        out[key] = {"dice_ET": round(float(s["ET"]["dice"]), 4),
                    "lesionwise_dice_ET": round(float(s["ET"]["lesionwise_dice"]), 4)}
    return out


def native_input(case, shape: tuple[int, ...]) -> np.ndarray:
    """The raw `case` (editions.Case) prepared as the network's input but kept on its own grid: its
    shape must be the kept probabilities' `shape` (the same crop), or the data folder is not the run's."""
    from nifti import read_case
    from prepare import prepare
    image = prepare(read_case(case, with_seg=False), None).image
    if tuple(image.shape[1:]) != tuple(shape):
        raise UserError(f"{case.name}: its scan in {case.location} is {'×'.join(map(str, image.shape[1:]))} voxels "
                        f"after the head crop, its kept probabilities {'×'.join(map(str, shape))}: --native must "
                        "be the folder the bench/real.py run read (--data)")
    return image


def choose_per_fold(per_case: dict[str, dict], fold_of: dict[str, int]) -> tuple[dict[str, str], dict[str, dict]]:
    """For each fold, the gate at the network's grid (or none) with the best mean ET Dice on the other
    folds' cases (ties: no gate, then the lowest); and every case scored with its fold's choice."""
    keys = [k for k in next(iter(per_case.values())) if not k.startswith(NATIVE)]
    chosen, scored = {}, {}
    for k in sorted(set(fold_of.values())):
        others = [n for n, f in fold_of.items() if f != k]
        means = {g: np.mean([per_case[n][g]["dice_ET"] for n in others]) for g in keys}
        best = max(means.values())
        chosen[str(k)] = next(g for g in keys if means[g] >= best - 1e-12)
        for n in (n for n, f in fold_of.items() if f == k):
            scored[n] = per_case[n][chosen[str(k)]]
    return chosen, scored


def summarise(per_case: dict[str, dict], chosen_scores: dict[str, dict]) -> dict:
    from report import institution
    from stats import mean_interval, paired
    names = sorted(per_case)
    variants = {g: {n: per_case[n][g] for n in names} for g in per_case[names[0]]}
    variants["chosen out of fold"] = chosen_scores
    out = {}
    for variant, scores in variants.items():
        entry = {}
        for key in ("dice_ET", "lesionwise_dice_ET"):
            values = np.array([scores[n][key] for n in names])
            base = np.array([per_case[n][NONE][key] for n in names])
            d = paired(base, values)
            entry[key] = {"mean": round(float(values.mean()), 4),
                          "ci95": [round(x, 4) for x in mean_interval(values)],
                          "change": round(d.change, 4), "change_ci95": [round(x, 4) for x in d.ci],
                          "verdict": d.verdict}
        sites = {}
        for n in names:
            sites.setdefault(institution(n), []).append(scores[n]["dice_ET"])
        entry["institutions_dice_ET"] = {s: round(float(np.mean(v)), 4) for s, v in sorted(sites.items())}
        out[variant] = entry
    natives = [k[len(NATIVE):] for k in per_case[names[0]] if k.startswith(NATIVE)]
    if natives:
        out["native vs network"] = {}
        for g in natives:
            entry = {}
            for key in ("dice_ET", "lesionwise_dice_ET"):
                d = paired(np.array([per_case[n][g][key] for n in names]),
                           np.array([per_case[n][NATIVE + g][key] for n in names]))
                entry[key] = {"change": round(d.change, 4), "change_ci95": [round(x, 4) for x in d.ci],
                              "verdict": d.verdict}
            out["native vs network"][g] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="a bench/real.py work folder (--work), all folds run")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gates", type=float, nargs="+", default=GATES,
                    help=f"T1c z-scores to gate at (default {' '.join(map(str, GATES))})")
    ap.add_argument("--native", type=Path, metavar="DATA",
                    help="the run's --data folder: also gate by each case's T1c on its own grid")
    args = ap.parse_args()

    from files import write_json
    from layout import open_case
    import oof
    pre_dir = args.work / "data" / "preprocessed"
    prob_dir, folds_file, manifest_file = args.work / "probabilities", args.work / "folds.json", pre_dir / "manifest.json"
    for path in (prob_dir, folds_file, manifest_file):
        if not path.exists():
            raise UserError(f"{path} is missing: --work must be a bench/real.py work folder whose folds all ran")
    manifest = json.loads(manifest_file.read_text())["cases"]
    fold_of_patient = {p: k for k, patients in enumerate(json.loads(folds_file.read_text())) for p in patients}
    kept = sorted(p.stem for p in prob_dir.glob("*.npz"))
    if not kept:
        raise UserError(f"no kept probabilities in {prob_dir}: run bench/real.py with every fold first")
    strays = [n for n in kept if n not in manifest or manifest[n]["patient"] not in fold_of_patient]
    if strays:
        raise UserError(f"{len(strays)} kept case(s) of {prob_dir} are not in the run's manifest or folds "
                        f"({', '.join(strays[:3])}): a work folder mixed from two runs; run bench/real.py again")
    fold_of = {n: fold_of_patient[manifest[n]["patient"]] for n in kept}
    raw = {}
    if args.native:
        from editions import find_cases
        raw = {c.name: c for c in find_cases(args.native, "--native must be the run's --data folder").cases}
        missing = [n for n in kept if n not in raw]
        if missing:
            raise UserError(f"{len(missing)} kept case(s) are not in {args.native} ({', '.join(missing[:3])}): "
                            "--native must be the folder the bench/real.py run read (--data)")

    per_case = {}
    for i, name in enumerate(kept, 1):
        case = oof.load_case(prob_dir / f"{name}.npz")
        image = open_case(pre_dir, name)[0].read()
        native = native_input(raw[name], case["probs"].shape[1:]) if raw else None
        per_case[name] = score_case(case["probs"], case["regions"], case["labels"], case["spacing"], image, args.gates,
                                    native)
        print(f"[{i}/{len(kept)}] {name}: ET Dice " + " ".join(f"{g} {s['dice_ET']:.3f}"
                                                             for g, s in per_case[name].items()), flush=True)
    chosen, chosen_scores = choose_per_fold(per_case, fold_of)
    summary = summarise(per_case, chosen_scores)
    write_json(args.out, {"work": str(args.work), "gates": list(args.gates),
                          "chosen_per_fold": chosen, "summary": summary, "per_case": per_case,
                          "fold_of": fold_of})
    print("\n| gate (T1c z) | ET Dice (95 % interval) | change vs no gate | lesion-wise ET | change |")
    print("|---|---|---|---|---|")
    for variant, e in summary.items():
        if variant == "native vs network":
            continue
        d, lw = e["dice_ET"], e["lesionwise_dice_ET"]
        if variant == NONE:
            print(f"| none | {d['mean']:.3f} ({d['ci95'][0]:.3f}-{d['ci95'][1]:.3f}) | baseline | {lw['mean']:.3f} | |")
            continue
        print(f"| {variant} | {d['mean']:.3f} ({d['ci95'][0]:.3f}-{d['ci95'][1]:.3f}) | {d['change']:+.3f} "
              f"({d['change_ci95'][0]:+.3f} to {d['change_ci95'][1]:+.3f}) {d['verdict']} | {lw['mean']:.3f} | "
              f"{lw['change']:+.3f} ({lw['change_ci95'][0]:+.3f} to {lw['change_ci95'][1]:+.3f}) |")
    for g, e in summary.get("native vs network", {}).items():
        d, lw = e["dice_ET"], e["lesionwise_dice_ET"]
        print(f"native vs network grid at {g}: ET Dice {d['change']:+.3f} ({d['change_ci95'][0]:+.3f} to "
              f"{d['change_ci95'][1]:+.3f}) {d['verdict']}, lesion-wise {lw['change']:+.3f} "
              f"({lw['change_ci95'][0]:+.3f} to {lw['change_ci95'][1]:+.3f})")
    print(f"gate chosen per fold on the other folds' cases: {chosen}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_stage(main)
