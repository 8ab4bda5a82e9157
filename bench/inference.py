"""Seconds per full case of sliding-window inference on the BraTS 2024 grid (182 x 218 x 182), ours
beside MONAI's `sliding_window_inference` with the same network, and predict.py end to end.

    python bench/inference.py                 # the params.yaml model on this machine's device
    python bench/inference.py --gpu-sized     # nnU-Net-sized U-Net (32->320, 6 levels), patch 128^3
    python bench/inference.py --gpu-sized --end-to-end   # also predict.py's steps on one written case

Times `inference.predict_probs` (the code validation, evaluate and predict use) on a random non-zero
head-sized input, median of --repeats runs after one warm-up, without and with 8-flip mirroring, for
window batches --batches. The reference is MONAI's `sliding_window_inference` with the same network,
overlap 0.5 and Gaussian blending (sigma = patch/8) at its best window batch; with mirroring, the
average of 8 such calls on flipped inputs (MONAI has no mirroring of its own). MONAI is optional
(`pip install --no-deps monai==1.6.1`); without it the reference is skipped and said so.
`--end-to-end` writes one synthetic 1 mm case and times predict.py's steps on it: read and check the
NIfTI files, prepare (reorient, crop, z-score), sliding window, labels back on the input grid, write.
Prints the device, torch/CUDA/cuDNN versions and the settings, for BENCHMARKS.md. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from inference import FLIPS, predict_probs, probs_to_labels  # noqa: E402
from model import UNet3D  # noqa: E402
from params import ModelParams, load_params  # noqa: E402
from runtime import autocast_for, default_device, resolve_precision  # noqa: E402

GRID = (182, 218, 182)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up: cuDNN autotuning, allocator
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def monai_reference(model: torch.nn.Module, image: torch.Tensor, patch: tuple[int, int, int], batch: int,
                    mirror: bool, precision: str):
    """A callable running MONAI's sliding window with our network, or None without MONAI."""
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        return None
    device = next(model.parameters()).device
    x = image[None].to(device)

    def probs(w: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model(w).float())

    @torch.no_grad()
    def run() -> torch.Tensor:
        with autocast_for(device, precision):
            total = None
            for dims in (FLIPS if mirror else ((),)):
                flipped = x.flip(dims) if dims else x
                out = sliding_window_inference(flipped, patch, batch, probs, overlap=0.5, mode="gaussian",
                                               sigma_scale=0.125)
                out = out.flip(dims) if dims else out
                total = out if total is None else total + out
            return (total / (8 if mirror else 1)).cpu()
    return run


def end_to_end(model: torch.nn.Module, patch: tuple[int, int, int], batch: int, precision: str,
               device: torch.device, mirrors: tuple[bool, ...]) -> None:
    """predict.py's steps on one written 1 mm synthetic case, each timed once after a warm-up run."""
    from brats import MODALITIES
    from editions import case_at
    from geometry import restore
    from nifti import read_case, write_nifti
    from prepare import prepare
    from synthesize import make_case
    images, _, affine = make_case(2024, 0, 0, GRID, 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        case_dir = Path(tmp) / "BraTS-GLI-00000-100"
        for m, mod in enumerate(MODALITIES):
            write_nifti(case_dir / f"{case_dir.name}-{mod}.nii.gz", images[m], affine)
        for mirror in mirrors:
            steps = {}
            for _ in range(2):                                   # the first run warms up
                t = time.perf_counter()
                raw = read_case(case_at(case_dir), with_seg=False)
                steps["read + check NIfTI"] = time.perf_counter() - t
                t = time.perf_counter()
                prepared = prepare(raw)
                x, box = prepared.image, prepared.box
                steps["prepare (RAS, crop, z-score)"] = time.perf_counter() - t
                sync(device)
                t = time.perf_counter()
                probs = predict_probs(model, x, patch, 0.5, batch, mirror, precision)
                sync(device)
                steps["sliding window (to host)"] = time.perf_counter() - t
                t = time.perf_counter()
                labels = restore(probs_to_labels(probs), box, raw.images.shape[1:], raw.affine)
                steps["labels, back to input grid"] = time.perf_counter() - t
                t = time.perf_counter()
                write_nifti(Path(tmp) / "out.nii.gz", labels, raw.affine)
                steps["write .nii.gz"] = time.perf_counter() - t
            total = sum(steps.values())
            print(f"predict.py end to end, mirror={mirror}: {total:.2f} s = " +
                  ", ".join(f"{k} {v:.2f} s" for k, v in steps.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu-sized", action="store_true", help="nnU-Net-sized network, patch 128^3")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8], help="window batches to time")
    ap.add_argument("--end-to-end", action="store_true", help="also time predict.py's steps on one case")
    ap.add_argument("--no-mirror", action="store_true", help="skip the mirrored timings (8x longer; for CPUs)")
    args = ap.parse_args()
    device = default_device()
    precision = resolve_precision("auto", device)
    if args.gpu_sized:
        config, patch = ModelParams(32, 320, 6, "instance", True), (128, 128, 128)
    else:
        params = load_params()
        config, patch = params.model, params.train.patch
    torch.manual_seed(0)
    model = UNet3D(config).to(device).eval()
    # a head-sized block of random intensities in the 2024 grid; preprocessing crops to about this
    image = torch.zeros((4, *GRID))
    image[:, 20:160, 20:195, 15:165] = torch.randn(4, 140, 175, 150)
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'} "
          f"({torch.get_num_threads()} threads); torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"cuDNN {torch.backends.cudnn.version()}")
    print(f"model: {config}; patch {patch}; {precision}; overlap 0.5, Gaussian; case {GRID}")
    for mirror in ((False,) if args.no_mirror else (False, True)):
        ours = {b: timed(lambda: predict_probs(model, image, patch, 0.5, b, mirror, precision), args.repeats,
                         device) for b in args.batches}
        best = min(ours, key=ours.get)
        line = f"mirror={mirror}: ours " + ", ".join(f"{s:.3f} s (batch {b})" for b, s in ours.items())
        refs = {b: monai_reference(model, image, patch, b, mirror, precision) for b in args.batches}
        if None in refs.values():
            print(line + "; MONAI reference skipped: pip install --no-deps monai==1.6.1")
            continue
        theirs = {b: timed(run, args.repeats, device) for b, run in refs.items()}
        ref_best = min(theirs, key=theirs.get)
        print(line + "; MONAI sliding_window_inference " +
              ", ".join(f"{s:.3f} s (batch {b})" for b, s in theirs.items()) +
              f"; best vs best: ours {theirs[ref_best] / ours[best]:.2f}x faster")
    if args.end_to_end:
        end_to_end(model, patch, max(args.batches), precision, device, (False,) if args.no_mirror else (False, True))


if __name__ == "__main__":
    main()
