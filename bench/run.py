"""All benchmarks in one table: training step (ours and nnU-Net's PlainConvUNet, same process; eager,
compiled and deterministic), data loader, full-case inference (ours and MONAI's sliding window with
our network, without and with mirroring), predict.py end to end, preprocessing.

    python bench/run.py            # full settings (meant for one GPU): batch 2 of 4 x 128^3, 32->320
    python bench/run.py --quick    # small CPU settings, seconds; CI runs this so the code never rots

Train step = forward + backward + optimizer step in our training configuration (Adam, Dice + BCE on
the region channels, deep supervision, autocast), median of --steps after --warmup, synchronised on
CUDA. References, each optional and skipped (and said so) when missing: nnU-Net's network
(`pip install --no-deps dynamic-network-architectures==0.4.4`) and MONAI (`pip install --no-deps
monai==1.6.1`). Prints device, versions and settings for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from inference import predict_probs  # noqa: E402
from model import UNet3D  # noqa: E402
from params import LossParams, ModelParams, load_params  # noqa: E402
from runtime import resolve_precision  # noqa: E402
from fit import forward_loss  # noqa: E402

LOSS = LossParams(dice=1.0, tversky=0.0, bce=1.0, tversky_alpha=0.4, tversky_beta=0.6)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def plain_conv_unet(config: ModelParams) -> torch.nn.Module | None:
    """nnU-Net's PlainConvUNet with the same stages, or None when the package is not installed."""
    try:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet
    except ImportError:
        return None
    w = [min(config.base_width * 2 ** i, config.max_width) for i in range(config.depth)]
    return PlainConvUNet(4, config.depth, w, torch.nn.Conv3d, 3, [1] + [2] * (config.depth - 1), [2] * config.depth,
                         4, [2] * (config.depth - 1), False, torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True},
                         None, None, torch.nn.LeakyReLU, {"inplace": True}, deep_supervision=config.deep_supervision)


def deterministic(on: bool) -> None:
    """The train stage's switches for bit-identical runs (runtime.setup_runtime)."""
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = not on


def bench_train_step(model: torch.nn.Module, batch: int, patch: int, device: torch.device, precision: str,
                     steps: int, warmup: int, compiled: bool = False) -> dict:
    model = model.to(device).train()
    if compiled:
        model = torch.compile(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 4, patch, patch, patch, device=device)
    y = torch.randint(0, 5, (batch, patch, patch, patch), device=device, dtype=torch.uint8)

    def step():
        loss = forward_loss(model, x, y, LOSS, device, precision)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = median_time(step, steps, warmup, device)
    peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else float("nan")
    return {"ms/step": seconds * 1e3, "patches/s": batch / seconds, "peak GB": peak}


def load_bench_module(name: str):
    """A sibling script of bench/ (its names clash with src/ modules on sys.path)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small CPU settings (CI)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--workers", type=int, default=12, help="DataLoader workers for the loader benchmark")
    args = ap.parse_args()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # before CUDA starts, for the deterministic row
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision("auto", device)
    if args.quick:
        config, batch, patch, steps, warmup, grid, spacing = ModelParams(8, 64, 4, "instance", True), 2, 32, 3, 1, \
            (91, 109, 91), 2.0
        args.workers = min(args.workers, 2)
    else:
        config, batch, patch, steps, warmup, grid, spacing = ModelParams(32, 320, 6, "instance", True), 2, 128, \
            args.steps, args.warmup, (182, 218, 182), 1.0
    compile_too = device.type == "cuda" and not args.quick      # compiling on a CPU takes minutes
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}; torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; {precision}; "
          f"batch {batch} x 4 x {patch}^3; widths {config.base_width}->{config.max_width}, {config.depth} levels")
    rows = []
    deterministic(False)
    torch.manual_seed(0)
    ours = bench_train_step(UNet3D(config), batch, patch, device, precision, steps, warmup)
    rows.append(("train step, ours", ours))
    fastest = ours
    if compile_too:
        fastest = bench_train_step(UNet3D(config), batch, patch, device, precision, steps, warmup, compiled=True)
        rows.append(("train step, ours, compiled", fastest))
    deterministic(True)
    slow = bench_train_step(UNet3D(config), batch, patch, device, precision, steps, warmup)
    deterministic(False)
    rows.append(("train step, ours, deterministic", slow))
    rows.append(("deterministic cost vs eager", {"ratio": slow["ms/step"] / ours["ms/step"]}))
    reference = plain_conv_unet(config)
    if reference is None:
        print("nnU-Net reference skipped: pip install --no-deps dynamic-network-architectures==0.4.4")
    else:
        ref = bench_train_step(reference, batch, patch, device, precision, steps, warmup)
        rows.append(("train step, nnU-Net PlainConvUNet", ref))
        rows.append(("speed-up, ours / reference", {"ratio": ref["ms/step"] / ours["ms/step"]}))
        if compile_too:
            ref_c = bench_train_step(plain_conv_unet(config), batch, patch, device, precision, steps, warmup,
                                     compiled=True)
            rows.append(("train step, PlainConvUNet compiled", ref_c))
            rows.append(("speed-up, ours compiled / ref compiled", {"ratio": ref_c["ms/step"] / fastest["ms/step"]}))
    with tempfile.TemporaryDirectory() as tmp:
        from preprocess import preprocess
        from synthesize import synthesize
        params = load_params(overrides={"synthesize.patients": 4, "synthesize.visits": 1,
                                        "synthesize.grid": list(grid), "synthesize.spacing_mm": spacing,
                                        "paths.synthetic_dir": f"{tmp}/raw", "paths.raw_dir": f"{tmp}/raw",
                                        "paths.preprocessed_dir": f"{tmp}/pre", "preprocess.workers": 2,
                                        "preprocess.val_fraction": 0.25, "preprocess.test_fraction": 0.25})
        synthesize(params.synthesize, 0, params.paths.synthetic_dir)
        t = time.perf_counter()
        preprocess(params)
        rows.append(("preprocess", {"cases/s": 4 / (time.perf_counter() - t)}))
        from layout import load_split
        pre = params.paths.preprocessed_dir
        loader = load_bench_module("scale").bench_loader(pre, load_split(pre, "train"), patch, batch, args.workers,
                                                         4 if args.quick else 50, "full", device)
        rows.append((f"loader, {args.workers} workers, full augmentation",
                     {**loader, "x fastest step": loader["patches/s"] / fastest["patches/s"]}))
    sliding = load_bench_module("inference")
    model = UNet3D(config).to(device).eval()
    image = torch.zeros((4, *grid))
    image[:, 5:-5, 5:-5, 5:-5] = torch.randn(4, grid[0] - 10, grid[1] - 10, grid[2] - 10)
    window = (patch,) * 3
    for mirror in (False, True):
        s = median_time(lambda: predict_probs(model, image, window, 0.5, 4, mirror, precision),
                        1 if args.quick else 3, 1, device)
        row = {"s/case": s}
        monai = sliding.monai_reference(model, image, window, 4, mirror, precision)
        if monai is not None:
            ref_s = median_time(monai, 1 if args.quick else 3, 1, device)
            row.update({"MONAI s/case": ref_s, "x faster": ref_s / s})
        rows.append((f"full case {grid}, mirror={mirror}, window batch 4", row))
    if not args.quick:
        sliding.end_to_end(model, window, 4, precision, device, (False, True))
    for name, values in rows:
        print(f"{name:<42}" + "  ".join(f"{k} {v:.3f}" for k, v in values.items()))


if __name__ == "__main__":
    main()
