"""Seconds per full case of sliding-window inference on the BraTS 2024 grid (182 x 218 x 182).

    python bench/inference.py                 # the params.yaml model on this machine's device
    python bench/inference.py --gpu-sized     # nnU-Net-sized U-Net (32->320, 6 levels), patch 128^3

Times `inference.predict_probs` (the code evaluate and predict use) on a random non-zero head-sized
input, median of --repeats runs after one warm-up, with and without 8-flip mirroring. Prints the device,
torch/CUDA/cuDNN versions and the settings, for BENCHMARKS.md. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from inference import predict_probs  # noqa: E402
from model import UNet3D  # noqa: E402
from params import ModelParams, load_params  # noqa: E402

GRID = (182, 218, 182)


def timed(fn, repeats: int, cuda: bool) -> float:
    fn()  # warm-up: cuDNN autotuning, allocator
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu-sized", action="store_true", help="nnU-Net-sized network, patch 128^3")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2, help="windows per forward pass")
    ap.add_argument("--mirror", action="store_true", help="also time 8-flip mirroring")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if args.gpu_sized:
        config, patch = ModelParams(32, 320, 6, "instance", True), (128, 128, 128)
    else:
        params = load_params()
        config, patch = params.model, params.train.patch
    model = UNet3D(config).to(device).eval()
    precision = "bf16" if cuda else "fp32"
    # a head-sized block of random intensities in the 2024 grid; preprocessing crops to about this
    image = torch.zeros((4, *GRID))
    image[:, 20:160, 20:195, 15:165] = torch.randn(4, 140, 175, 150)
    print(f"device: {torch.cuda.get_device_name() if cuda else 'CPU'} ({torch.get_num_threads()} threads); "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    print(f"model: {config}; patch {patch}; window batch {args.batch}; {precision}; overlap 0.5, Gaussian")
    for mirror in ([False, True] if args.mirror else [False]):
        seconds = timed(lambda: predict_probs(model, image, patch, 0.5, args.batch, mirror, precision),
                        args.repeats, cuda)
        print(f"full case {GRID}, mirror={mirror}: {seconds:.3f} s")


if __name__ == "__main__":
    main()
