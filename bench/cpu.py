"""CPU speed where the default pipeline and CI run: the train stage's step and predict.py end to end,
today's code path beside the plain one it replaced, in one process on one machine.

    python bench/cpu.py [--steps 12] [--cases 3] [--out bench/results/cpu.json]

Train step: the train stage's own path (`fit.build` from params.yaml's model and train sections, a
batch from its loader, `fit.forward_loss`, backward, Adam), median of --steps after 3 warm-up steps:
  plain          contiguous activations, not compiled: the train stage before
  channels-last  what `runtime.memory_format` now gives a CPU, not compiled
  + compile      channels-last with `train.compile: true`: the train stage's default path (its first
                 step, the compilation, reported apart; --no-compile skips it)
Predict: `predict.main` on --cases written synthetic cases of the default grid (read, check,
prepare, sliding window with 8-flip mirroring, write), the evaluate stage's settings. Prints the CPU
model and flags, the versions and a table; --out writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import fit  # noqa: E402
from augment import to_batch  # noqa: E402
from params import load_params  # noqa: E402
from runtime import Runtime  # noqa: E402


def cpu_model() -> dict:
    """The CPU's name and the instruction sets that decide what is fast."""
    info = {"machine": platform.machine(), "threads": torch.get_num_threads()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["model"] = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        flags = set(next(line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")))
        info["flags"] = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni"})
    except (OSError, StopIteration):
        pass
    return info


@contextmanager
def layout(fmt: torch.memory_format):
    """Run the train stage's code with `fmt` as the CPU's activation layout."""
    saved = fit.memory_format
    fit.memory_format = lambda device: fmt
    try:
        yield
    finally:
        fit.memory_format = saved


def prepared_data(tmp: Path, cases: int):
    """The default params with `cases` synthetic patients of the default grid, synthesized and
    preprocessed under `tmp` (train gets them all; the split is not what this measures)."""
    import yaml

    from params import apply_overrides
    from preprocess import preprocess
    from synthesize import synthesize
    overrides = {"synthesize.patients": cases, "synthesize.visits": 1, "paths.synthetic_dir": str(tmp / "raw"),
                 "paths.raw_dir": str(tmp / "raw"), "paths.preprocessed_dir": str(tmp / "pre"),
                 "preprocess.val_fraction": 0.0, "preprocess.test_fraction": 0.0, "train.compile": False,
                 "lr": 1e-3, "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.999}
    params_file = tmp / "params.yaml"
    raw = apply_overrides(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(params_file)
    synthesize(params.synthesize, params.base.seed, params.paths.synthetic_dir)
    preprocess(params)
    return params, params_file


def train_step(params, steps: int) -> dict:
    """Median seconds of the train stage's step (fit.build's parts, its loader's first batch)."""
    rt = Runtime(torch.device("cpu"), "fp32", 0, 1)
    from layout import load_split
    parts = fit.build(params, rt, load_split(params.paths.preprocessed_dir, "train"))
    x, y = to_batch(next(iter(parts.loader)), rt.device, params.train.patch)
    times = []
    for _ in range(steps + 3):
        t = time.perf_counter()
        loss = fit.forward_loss(parts.step_model, x, y, params.train.loss, rt.device, rt.precision)
        parts.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parts.optimizer.step()
        times.append(time.perf_counter() - t)
    return {"s/step": statistics.median(times[3:]), "first step s": times[0],
            "patches/s": params.train.batch_size / statistics.median(times[3:])}


def predict_cases(weights: Path, cases: Path, out: Path, params_file: Path) -> float:
    """Seconds per case of predict.py end to end, with the evaluate stage's settings."""
    import predict
    t = time.perf_counter()
    assert predict.main(["--weights", str(weights), "--input", str(cases), "--output", str(out), "--overwrite",
                         "--params", str(params_file), "--no-postprocessing"]) == 0
    return (time.perf_counter() - t) / len(list(cases.iterdir()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--no-compile", dest="compile", action="store_false",
                    help="skip the compiled step (compiling takes about a minute)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        params, params_file = prepared_data(Path(tmp), args.cases)
        for name, fmt in (("plain", torch.contiguous_format), ("channels-last", torch.channels_last_3d)):
            with layout(fmt):
                rows[f"train step, {name}"] = train_step(params, args.steps)
        if args.compile:
            compiled = load_params(params_file, {"train.compile": True})
            rows["train step, channels-last + compile"] = train_step(compiled, args.steps)
        weights = Path(tmp) / "model.pt"
        from model import UNet3D
        from weights import current_spec, save, weights_payload
        net = UNet3D(params.model)
        save(weights, weights_payload(net.state_dict(), params.model, current_spec(params.train.patch, (2.0,) * 3),
                                      {}, 0, {}, {"training_data": {}, "code": {}, "versions": {}}))
        predict_cases(weights, Path(tmp) / "raw", Path(tmp) / "warm", params_file)   # warm-up
        rows["predict.py per case"] = {"s/case": predict_cases(weights, Path(tmp) / "raw", Path(tmp) / "out",
                                                               params_file)}
    base_train, base_predict = rows["train step, plain"]["s/step"], rows["predict.py per case"]["s/case"]
    for name, row in rows.items():
        base = base_train if name.startswith("train") else base_predict
        row["x plain"] = base / row.get("s/step", row.get("s/case"))
    result = {"cpu": cpu_model(), "torch": torch.__version__, "python": platform.python_version(),
              "network": {k: getattr(params.model, k) for k in ("base_width", "max_width", "depth", "norm")},
              "batch": [params.train.batch_size, 4, *params.train.patch], "rows": rows}
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    for name, row in rows.items():
        print(f"{name:<40}" + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
