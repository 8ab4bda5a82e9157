"""Predict BraTS 2024 label maps for new cases: a valid challenge submission.

    python src/predict.py --weights models --input CASES_DIR --output PRED_DIR

`--weights` is the model folder (`models`: every fold of `train.folds` and the post-processing chosen
for them, as `dvc pull` places them; the folds' probabilities are averaged) or one weights file.
`--input` is one case or a folder of them, in any edition's layout (src/editions.py: a 2023/2024
case folder, a 2017-2021 one, a Decathlon task or images folder; no seg needed). Each case is checked
as preprocess checks it, prepared the same way (RAS, crop, resampled to the spacing the weights were
trained at, z-score, float16), segmented by sliding-window inference, its probabilities resampled
back to the input's grid, and written as `<output>/<case>.nii.gz`: uint8 labels on the input's own
grid, with its shape and affine; 2024's labels 0-4, or another edition's values with `--labels`
(`--labels 2021`: 1 NCR, 2 ED, 4 ET, so that the tools of that year score it). The inference settings (overlap,
window batch, 8-flip mirroring) are the evaluate stage's, read from params.yaml's `evaluate` section,
so predict gives the masks the metrics describe; flags override them (`--no-mirror`: 8× faster;
`--no-compile`: no torch.compile, for one small case or a machine without a C++ compiler).
The post-processing the postprocess stage chose is applied too: `postprocessing.json` in the model
folder (for a weights file: in the model folder it lies in), or `--postprocessing FILE`;
`--no-postprocessing` writes the network's masks as they are. `--cutoff REGION=P` cuts a region's
probability at P instead of 0.5 (before the post-processing).

A case whose output an earlier run into the same folder wrote and recorded is skipped (`--overwrite`
redoes it), so an interrupted run continues; an output it did not record (a run killed between the
two) is redone, and an earlier run with other weights or settings (`--labels`, overlap, mirroring,
precision, post-processing) is refused rather than mixed in.
With `--compile` (the evaluate stage's `evaluate.compile`), the network is compiled at the first case.
`--save-probabilities` also writes `<case>.probs.npz`: the network's per-region probabilities (before
post-processing) on the input's grid as uint8 (probability = value / 255) with the region names and
the affine. `predictions.json`
records every weights file's SHA-256 and the inference spec, the settings, the software versions and,
per case, the input's shape and affine and the seconds it took. A bad case is reported and skipped
(`--fail-fast` stops instead; a machine that cannot compile stops at the first); the exit status is 1
if any case failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from brats import MODEL_REGIONS, regions_to_labels
from editions import EDITIONS, Case, Edition, find_cases
from errors import SetupError, UserError, run_stage
from files import atomic_write, check_writable, file_sha256, remove_stale_writes, write_json
from geometry import restore
from inference import probs_to_labels
from nifti import read_case, write_nifti
from params import PARAMS_FILE, load_params
import postprocessing
from postprocessing import Postprocessing
from predictor import Predictor, Settings
from prepare import prepare
from runtime import resolve_precision
from tracking import git_commit
from weights import FOLDS_DIR, weights_in

RECORD_FILE = "predictions.json"
PROBS_SUFFIX = ".probs.npz"
INPUT_HINT = "give --input a case (a case folder of any BraTS edition, a Decathlon image) or a folder of them"


def cut(probs: torch.Tensor, regions: tuple[str, ...], cutoffs: dict[str, float], paint) -> np.ndarray:
    """The label map of (R, ...) region probabilities, each region above its cut-off (0.5 unless
    `cutoffs` names it)."""
    if not cutoffs:
        return probs_to_labels(probs, paint=paint)
    above = torch.tensor([cutoffs.get(r, 0.5) for r in regions], dtype=probs.dtype).view(-1, *[1] * (probs.dim() - 1))
    return regions_to_labels((probs > above).numpy(), paint)


def predict_case(predictor: Predictor, case: Case, with_probs: bool = False, labels_of: Edition = EDITIONS["2024"],
                 cutoffs: dict[str, float] | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, tuple[int, ...]]:
    """Label map (uint8, 2024 labels, painted with the regions `labels_of` has labels for: without
    RC before 2024, so that tumour under an RC output is not lost when RC becomes background) and,
    when asked, region probabilities (R, ...) as uint8 on the case's own grid; that grid's affine and
    shape. The case is resampled to the spacing the weights were trained at, and the probabilities
    back to its own grid before thresholding (at 0.5, or a region's `cutoffs`)."""
    raw = read_case(case, with_seg=False)
    prepared = prepare(raw, predictor.spec.spacing_mm)
    probs = predictor.probs(prepared.image, prepared.native_shape)
    labels = postprocessing.apply(cut(probs, predictor.spec.regions, cutoffs or {}, labels_of.paint), predictor.pp,
                                  prepared.native_spacing)
    shape = raw.images.shape[1:]
    on_grid = np.stack([restore(p, prepared.box, shape, raw.affine)
                        for p in (probs.numpy() * 255).round().astype(np.uint8)]) if with_probs else None
    return restore(labels, prepared.box, shape, raw.affine), on_grid, raw.affine, shape


def save_probabilities(path: Path, probs: np.ndarray, regions: tuple[str, ...], affine: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, probabilities=probs, regions=np.array(regions), affine=affine)
    atomic_write(path, write)


def software() -> dict:
    """Versions that decide the output, and the project's commit when run from a git checkout."""
    import nibabel
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "nibabel": nibabel.__version__, "commit": git_commit(Path(__file__).parent)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, required=True,
                    help="the model folder (models: the folds and their post-processing) or one weights file")
    ap.add_argument("--input", type=Path, required=True,
                    help="a case (folder of any BraTS edition, or Decathlon image), or a folder of them")
    ap.add_argument("--output", type=Path, required=True, help="folder for <case>.nii.gz predictions")
    ap.add_argument("--labels", choices=tuple(EDITIONS), default="2024",
                    help="label values to write: 2024 (0-4, default), 2023 (no RC), 2021 (also 2017-2020: "
                         "1 NCR, 2 ED, 4 ET) or msd (1 oedema, 2 non-enhancing, 3 enhancing); RC becomes 0 "
                         "where an edition has no label for it")
    ap.add_argument("--params", type=Path, default=PARAMS_FILE,
                    help="params.yaml whose evaluate section gives the defaults below (default: the repository's)")
    ap.add_argument("--overlap", type=float, help="sliding-window overlap (default: evaluate.overlap)")
    ap.add_argument("--batch", type=int, help="windows per forward pass (default: evaluate.batch)")
    ap.add_argument("--mirror", action=argparse.BooleanOptionalAction,
                    help="average over the 8 axis flips, 8x slower (default: evaluate.mirror)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction,
                    help="torch.compile the network: on a CPU about 2x faster a case once compiled, which "
                         "takes 10-30 s at the first case (default: evaluate.compile)")
    ap.add_argument("--postprocessing", type=Path,
                    help="post-processing file (default: postprocessing.json beside the weights)")
    ap.add_argument("--no-postprocessing", action="store_true", help="write the network's masks unchanged")
    ap.add_argument("--cutoff", dest="cutoffs", type=parse_cutoff, action="append", default=[],
                    metavar="REGION=P", help="a region's probability cut-off instead of 0.5 (repeatable; "
                    "e.g. WT=0.8 for the synthetic default on real scans)")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                    help="auto: bf16 on CUDA, fp32 on CPU (as the evaluate stage)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--save-probabilities", action="store_true",
                    help="also write <case>.probs.npz: uint8 per-region probabilities on the input's grid")
    ap.add_argument("--overwrite", action="store_true", help="redo cases whose output already exists")
    ap.add_argument("--fail-fast", action="store_true", help="stop at the first bad case")
    args = ap.parse_args(argv)
    args.cutoffs = dict(args.cutoffs)
    if args.postprocessing and args.no_postprocessing:
        ap.error("--postprocessing and --no-postprocessing exclude each other")
    if args.overlap is not None and not 0 <= args.overlap < 1:
        ap.error(f"--overlap {args.overlap}: must be at least 0 and below 1")
    if args.batch is not None and args.batch < 1:
        ap.error(f"--batch {args.batch}: must be 1 or more")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        ap.error(f"--device {args.device!r}: not a device (cpu, cuda, cuda:1, ...)")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: no CUDA GPU is available here; use --device cpu")
    return args


def parse_cutoff(text: str) -> tuple[str, float]:
    """`REGION=P`: a region of the network's outputs and a probability strictly between 0 and 1."""
    region, _, value = text.partition("=")
    try:
        p = float(value)
    except ValueError:
        p = None
    if region not in MODEL_REGIONS or p is None or not 0 < p < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give REGION=P, REGION one of {', '.join(MODEL_REGIONS)} "
                                         "and P a probability between 0 and 1 (e.g. WT=0.8)")
    return region, p


def settings_for(args: argparse.Namespace) -> Settings:
    """Flags where given, else the evaluate stage's settings from params.yaml (read only when needed,
    so predict also runs outside a checkout with all three flags given)."""
    precision = resolve_precision(args.precision, torch.device(args.device))
    flags = (args.overlap, args.batch, args.mirror, args.compile)
    if None not in flags:
        return Settings(*flags[:3], precision, args.compile)
    try:
        evaluate = load_params(args.params).evaluate
    except UserError as e:
        raise UserError(f"{e} (or give --overlap, --batch, --mirror/--no-mirror and --compile/--no-compile)") from None
    pick = lambda flag, default: default if flag is None else flag  # noqa: E731
    return Settings(pick(args.overlap, evaluate.overlap), pick(args.batch, evaluate.batch),
                    pick(args.mirror, evaluate.mirror), precision, pick(args.compile, evaluate.compile))


def model_folder(weights: Path) -> Path:
    """The folder that holds the post-processing of `--weights`: itself, or for a weights file of a
    fold (`<models>/folds/fold_K/model.pt`) the model folder, else the file's folder."""
    if weights.is_dir():
        return weights
    return weights.parents[2] if weights.parent.parent.name == FOLDS_DIR else weights.parent


def weights_for(args: argparse.Namespace) -> list[Path]:
    """The weights files to ensemble: `--weights` itself when a file; in a folder, the folds its
    post-processing file lists, whether or not it is applied (so a fold left from an earlier
    `train.folds` is not mixed in), else every fold's weights there."""
    if not args.weights.exists():
        raise UserError(f"--weights {args.weights} not found: give the model folder (`dvc pull` fetches it) "
                        "or a weights file")
    pp_file = args.weights / postprocessing.FILE
    if args.weights.is_dir() and pp_file.exists():
        listed = [w for w, _ in postprocessing.weights_of(pp_file)]
        if listed:
            return listed
    return weights_in(args.weights)


def postprocessing_for(args: argparse.Namespace, regions: tuple[str, ...],
                       weights: list[Path]) -> tuple[Postprocessing, str | None]:
    """The post-processing to apply and the file it comes from (None: none applied)."""
    if args.no_postprocessing:
        return Postprocessing.none(), None
    path = args.postprocessing or model_folder(args.weights) / postprocessing.FILE
    if args.postprocessing is None and not path.exists():
        print(f"warning: no {path} beside the weights: masks are not post-processed, unlike the evaluate "
              f"stage's (`dvc pull postprocess` fetches it; --no-postprocessing silences this)", file=sys.stderr)
        return Postprocessing.none(), None
    if args.postprocessing is None:
        postprocessing.check_weights(path, weights, exact=False)
    return postprocessing.load(path, regions), str(path)


# What decides the masks: an earlier run's outputs are reused only where these are the same. Not the
# window batch, compilation, device name or software versions (same masks), nor file paths.
def _decides(record: dict) -> dict:
    settings = {k: v for k, v in record.get("settings", {}).items()
                if k not in ("batch", "compile", "device", "probabilities", "postprocessing")}
    settings["cutoffs"] = settings.get("cutoffs") or {}        # a record without them cut at 0.5
    weights = record.get("weights", {})
    return {"weights": sorted(f.get("sha256") for f in weights.get("files", [])),
            "inference settings of the weights": weights.get("inference"), **settings,
            "post-processing": record.get("settings", {}).get("postprocessing", {}).get("min_mm3")}


def resumable(earlier: dict, now: dict, output: Path) -> dict:
    """The cases an earlier run into `output` recorded, when it used the same weights and settings as
    this one; otherwise a one-line error (its outputs would be mixed with different ones)."""
    if not earlier:
        return {}
    try:
        then, current = _decides(earlier), _decides(now)
    except (AttributeError, TypeError):          # a record of another shape: vouches for nothing
        print(f"warning: {output / RECORD_FILE} is not a record this version reads; every case is predicted "
              "again", file=sys.stderr)
        return {}
    changed = [k for k in current if then.get(k) != current[k]]
    if changed and earlier.get("cases"):
        what = ", ".join(f"{k} {then.get(k)!r} (now {current[k]!r})" if k not in ("weights", "post-processing",
                         "inference settings of the weights") else f"other {k}" for k in changed)
        raise UserError(f"{output} holds predictions of an earlier run made with {what}; resuming would mix "
                        "them with these: give --overwrite to redo every case, or choose another --output")
    cases = earlier.get("cases")
    return cases if isinstance(cases, dict) else {}


def earlier_record(path: Path) -> dict:
    """An earlier run's `predictions.json`, or {} where there is none or it cannot be read (then its
    outputs count as unrecorded and are redone: nothing is trusted that the record does not vouch for)."""
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        return record
    except (OSError, UnicodeDecodeError, ValueError) as e:
        print(f"warning: {path} cannot be read ({e}); every case is predicted again", file=sys.stderr)
        return {}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_for(args)
    weights = weights_for(args)
    predictor = Predictor(weights, settings, args.device, compile_key="--compile (evaluate.compile)")
    spec = predictor.spec
    pp, pp_file = postprocessing_for(args, spec.regions, weights)
    predictor.pp = pp
    listing = find_cases(args.input, INPUT_HINT)
    cases = listing.cases
    for name, reason in listing.ignored.items():
        print(f"ignored {args.input / name}: {reason}", file=sys.stderr)
    if listing.misnamed and args.fail_fast:
        raise UserError(next(iter(listing.misnamed.values())))
    check_writable(args.output, "predict writes its outputs there: free space, fix permissions or choose "
                                "another --output")
    record_path = args.output / RECORD_FILE
    remove_stale_writes(args.output)
    earlier = earlier_record(record_path) if not args.overwrite else {}
    record = {"weights": {"files": [{"path": str(w), "sha256": file_sha256(w)} for w in weights],
                          "inference": {k: list(v) if isinstance(v, tuple) else v
                                        for k, v in dataclasses.asdict(spec).items()}},
              "settings": {**dataclasses.asdict(settings), "device": str(args.device), "labels": args.labels,
                           "probabilities": args.save_probabilities, "cutoffs": args.cutoffs,
                           "postprocessing": {"file": pp_file, "min_mm3": pp.min_mm3}},
              "software": software(), "cases": {}, "failed": {}}
    previous = {} if args.overwrite else resumable(earlier, record, args.output)
    failed = dict(listing.misnamed)
    for reason in failed.values():
        print(f"error: {reason}", file=sys.stderr)
    skipped = 0
    for case in tqdm(cases, desc="predict", unit="case"):
        out = args.output / f"{case.name}.nii.gz"
        probs_out = args.output / f"{case.name}{PROBS_SUFFIX}"
        if case.name in previous and out.exists() and (probs_out.exists() or not args.save_probabilities):
            skipped += 1                       # done by an earlier run with the same weights and settings
            record["cases"][case.name] = previous[case.name]
            continue
        start = time.perf_counter()
        try:
            labels, probs, affine, shape = predict_case(predictor, case, args.save_probabilities, EDITIONS[args.labels],
                                                        args.cutoffs)
        except UserError as e:
            if args.fail_fast or isinstance(e, SetupError):
                raise
            failed[case.name] = str(e)
            print(f"error: {e}", file=sys.stderr)
            continue
        if args.save_probabilities:
            save_probabilities(probs_out, probs, spec.regions, affine)
        write_nifti(out, EDITIONS[args.labels].from_2024(labels), affine)
        record["cases"][case.name] = {"input_shape": list(shape), "input_affine": affine.round(6).tolist(),
                                          "seconds": round(time.perf_counter() - start, 3)}
        record["failed"] = failed
        write_json(record_path, record)        # after every case: an interrupted run keeps its record
    record["failed"] = failed
    write_json(record_path, record)
    total = len(cases) + len(listing.misnamed)
    done = total - len(failed) - skipped
    print(f"wrote {done} of {total} predictions to {args.output}"
          + (f" ({skipped} already there: --overwrite redoes them)" if skipped else ""))
    if failed:
        print(f"{len(failed)} case(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_stage(lambda: sys.exit(main()))
