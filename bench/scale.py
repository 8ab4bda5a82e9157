"""Scale benchmark: what BraTS-sized data costs in time and bytes, extrapolated to 1350 cases.

    python bench/scale.py --cases 8 --workers 2                  # this machine (BENCHMARKS.md)
    python bench/scale.py --cases 24 --workers 12 --loader-workers 12   # a 16-core GPU machine
    python bench/scale.py --cases 2 --workers 2 --grid 48 56 48 --spacing 4 --patch 32 --batches 2  # CI

Synthesises N cases on the 1 mm BraTS grid (`--workers` processes), preprocesses them, and reports:
  - synthesize and preprocess cases/s, and per worker;
  - bytes per case: raw .nii.gz, preprocessed (Blosc2, src/layout.py), and what DVC's cache holds
    after `dvc add` of both folders (measured with a throw-away DVC project when `dvc` is installed);
  - the storage choices side by side on the first cases: float32 / float16 .npy and Blosc2 LZ4 / Zstd,
    bytes against raw and the time to read one patch;
  - DataLoader patches/s with `--loader-workers` workers for augmentation none, light and full, and
    the time the training device takes to apply the full set to a batch (src/augment.py);
  - the extrapolation to 1350 cases on `--cores` cores (default 16).
Results are printed and written as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

BRATS_CASES = 1350


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in folder.rglob(pattern) if p.is_file())


def dvc_cache_bytes(root: Path, folders: list[Path]) -> int | None:
    """Bytes in a fresh DVC cache after `dvc add` of `folders` (None without dvc)."""
    if shutil.which("dvc") is None:
        return None
    project = root / "dvcproject"
    project.mkdir()
    for f in folders:
        shutil.copytree(f, project / f.name)
    run = dict(cwd=project, check=True, capture_output=True)
    subprocess.run(["dvc", "init", "--no-scm", "-q"], **run)
    subprocess.run(["dvc", "add", "-q", *[f.name for f in folders]], **run)
    size = folder_bytes(project / ".dvc" / "cache")
    shutil.rmtree(project)
    return size


def storage_choices(pre_dir: Path, raw_dir: Path, cases: list[str], patch: int) -> dict[str, dict]:
    """Each candidate format for the image: bytes per case against the same cases' raw .nii.gz files,
    ms to read one patch into float32 memory."""
    import blosc2

    from layout import open_case
    rows: dict[str, dict] = {}
    images = [open_case(pre_dir, c)[0].read() for c in cases]
    raw_bytes = np.mean([folder_bytes(raw_dir / c) for c in cases])
    with tempfile.TemporaryDirectory() as tmp:
        def measure(name: str, write, read) -> None:
            sizes, times = [], []
            for i, image in enumerate(images):
                path = Path(tmp) / f"{i}-{name}"
                write(path, image)
                sizes.append(path.stat().st_size)
                rng = np.random.default_rng(i)
                for _ in range(5):
                    corner = [int(rng.integers(0, max(1, n - patch + 1))) for n in image.shape[1:]]
                    t = time.perf_counter()
                    np.array(read(path)[(slice(None), *(slice(c, c + patch) for c in corner))], dtype=np.float32)
                    times.append(time.perf_counter() - t)
            rows[name] = {"MB/case": np.mean(sizes) / 1e6, "x raw": np.mean(sizes) / raw_bytes,
                          "ms/patch": 1e3 * statistics.median(times)}

        for name, dtype in (("npy float32", np.float32), ("npy float16", np.float16)):
            def write(p, a, dtype=dtype):
                with open(p, "wb") as f:
                    np.save(f, a.astype(dtype))
            measure(name, write, lambda p: np.load(p, mmap_mode="r"))
        for codec in ("LZ4", "ZSTD"):
            cparams = {"codec": getattr(blosc2.Codec, codec), "clevel": 1 if codec == "ZSTD" else 5,
                       "filters": [blosc2.Filter.SHUFFLE], "nthreads": 1}

            def write(p, a, cparams=cparams):
                chunks = (a.shape[0], *(min(64, n) for n in a.shape[1:]))
                blocks = (1, *(min(32, n) for n in a.shape[1:]))
                p.write_bytes(blosc2.asarray(a.astype(np.float16), chunks=chunks, blocks=blocks,
                                             cparams=cparams).to_cframe())
            measure(f"blosc2 {codec} float16", write, lambda p: blosc2.open(str(p), mode="r", dparams={"nthreads": 1}))
    return rows


def bench_loader(pre_dir: Path, cases: list[str], patch: int, batch: int, workers: int, batches: int,
                 augmentation: str, device: torch.device | None = None) -> dict[str, float]:
    """Patches/s the DataLoader delivers (collated, pinned on CUDA); with `device`, also the median
    ms the device takes to apply the augmentation to a batch (augment.to_batch)."""
    from torch.utils.data import DataLoader

    from augment import collate, to_batch
    from dataset import PatchDataset
    dataset = PatchDataset(pre_dir, cases, (patch,) * 3, (batches + 1) * batch, 0.33, augmentation, 0)
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=collate,
                        pin_memory=torch.cuda.is_available())
    it = iter(loader)
    kept = [next(it)]  # worker start-up is not throughput
    t = time.perf_counter()
    n = 0
    for b in it:
        n += len(b[0])
        if len(kept) < 6:
            kept.append(b)
    row = {"patches/s": n / (time.perf_counter() - t)}
    if device is not None:
        times = []
        for b in kept:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            to_batch(b, device, (patch,) * 3)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        row["device ms/batch"] = 1e3 * statistics.median(times[1:] or times)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=8, help="synthetic cases to make (at least 2)")
    ap.add_argument("--workers", type=int, default=2, help="processes for synthesize and preprocess")
    ap.add_argument("--loader-workers", type=int, default=None, help="DataLoader workers (default: --workers)")
    ap.add_argument("--cores", type=int, default=16, help="cores of the machine to extrapolate to")
    ap.add_argument("--grid", type=int, nargs=3, default=[182, 218, 182])
    ap.add_argument("--spacing", type=float, default=1.0)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--batches", type=int, default=30, help="batches timed per loader setting")
    ap.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    args = ap.parse_args()
    if args.cases < 2 or args.workers < 1:
        ap.error("--cases must be at least 2 and --workers at least 1")
    loader_workers = args.workers if args.loader_workers is None else args.loader_workers

    from params import load_params
    from preprocess import preprocess
    from synthesize import synthesize
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"{os.cpu_count()} CPUs, {torch.cuda.get_device_name() if device.type == 'cuda' else 'no GPU'}; "
          f"torch {torch.__version__}, numpy {np.__version__}; {args.cases} cases {tuple(args.grid)} at "
          f"{args.spacing} mm, {args.workers} workers", flush=True)
    result: dict = {"settings": vars(args) | {"out": str(args.out), "cpus": os.cpu_count(),
                                              "device": str(device)}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        params = load_params(overrides={
            "synthesize.patients": args.cases, "synthesize.visits": 1, "synthesize.grid": args.grid,
            "synthesize.spacing_mm": args.spacing, "synthesize.workers": args.workers,
            "paths.synthetic_dir": f"{tmp}/raw", "paths.raw_dir": f"{tmp}/raw",
            "paths.preprocessed_dir": f"{tmp}/preprocessed", "preprocess.workers": args.workers,
            "preprocess.val_fraction": 0.0, "preprocess.test_fraction": 0.0})
        t = time.perf_counter()
        synthesize(params.synthesize, params.base.seed, params.paths.synthetic_dir)
        synth_s = time.perf_counter() - t
        t = time.perf_counter()
        preprocess(params)
        pre_s = time.perf_counter() - t
        n, w = args.cases, min(args.workers, args.cases)
        raw, pre = params.paths.synthetic_dir, params.paths.preprocessed_dir
        raw_b, pre_b = folder_bytes(raw) / n, folder_bytes(pre / "cases") / n
        cache = dvc_cache_bytes(root, [raw, pre])
        result["time"] = {"synthesize cases/s": n / synth_s, "synthesize cases/s/worker": n / synth_s / w,
                          "preprocess cases/s": n / pre_s, "preprocess cases/s/worker": n / pre_s / w}
        result["bytes per case"] = {"raw .nii.gz MB": raw_b / 1e6, "preprocessed MB": pre_b / 1e6,
                                    "preprocessed / raw": pre_b / raw_b,
                                    "DVC cache MB (raw + preprocessed)": None if cache is None else cache / n / 1e6}
        from layout import load_split
        cases = load_split(pre, "train")
        result["storage choices"] = storage_choices(pre, raw, cases[:3], args.patch)
        result["loader"] = {}
        for augmentation in ("none", "light", "full"):
            row = bench_loader(pre, cases, args.patch, args.batch, loader_workers, args.batches, augmentation,
                               device if augmentation == "full" else None)
            result["loader"][f"{augmentation}, {loader_workers} workers"] = row
            print(f"loader {augmentation}: {row}", flush=True)
    per_worker = result["time"]
    hours = {stage: BRATS_CASES / (per_worker[f"{stage} cases/s/worker"] * args.cores) / 3600
             for stage in ("synthesize", "preprocess")}
    sizes = result["bytes per case"]
    result[f"extrapolated to {BRATS_CASES} cases, {args.cores} cores"] = {
        "synthesize h": hours["synthesize"], "preprocess h": hours["preprocess"],
        "raw GB": sizes["raw .nii.gz MB"] * BRATS_CASES / 1e3,
        "preprocessed GB": sizes["preprocessed MB"] * BRATS_CASES / 1e3,
        "DVC cache GB": None if cache is None else sizes["DVC cache MB (raw + preprocessed)"] * BRATS_CASES / 1e3}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for section, values in result.items():
        if section == "settings":
            continue
        print(section)
        for key, value in values.items():
            text = json.dumps(value) if isinstance(value, dict) else (f"{value:.3f}" if value is not None else "n/a")
            print(f"  {key:<40} {text}")


if __name__ == "__main__":
    main()
