"""CPU speed where the default pipeline and CI run: the train stage's step and predict.py end to end,
today's code path beside the plain one it replaced, in one process on one machine.

    python bench/cpu.py [--steps 12] [--cases 3] [--out bench/results/cpu.json]

Train step: the train stage's own path (`fit.build` from params.yaml's model and train sections, a
batch from its loader, `fit.forward_loss`, backward, Adam), median of --steps after 3 warm-up steps:
  plain          contiguous activations, PyTorch's InstanceNorm3d kernel, not compiled: the train
                 stage before this work
  channels-last  what `runtime.memory_format` now gives a CPU, with model.InstanceNorm3d keeping that
                 layout, not compiled (`train.compile: false`)
  + compile      channels-last with `train.compile: true`: the train stage's default path (its first
                 step, the compilation, reported apart; --no-compile skips it)
  ..., var_mean norm   the same with model.InstanceNorm3d's previous channels-last form
                 (`var_mean_norm` below) instead of today's group norm
  ..., bf16 autocast   channels-last under CPU autocast to bf16, only on a CPU with native bf16
                 (AVX512-BF16 or AMX); the pipeline keeps fp32 on a CPU
Predict: `predict.main` on --cases written synthetic cases of the default grid (read, check,
prepare, sliding window with 8-flip mirroring, write), the evaluate stage's settings, in the same
configurations (`evaluate.compile`, `--compile`, for the compiled ones). Per case from its record:
the first case (which pays the compilation) apart, the median of the others. Prints the CPU model
and flags, the versions and a table; --out writes JSON.
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


def var_mean_norm(self, x: torch.Tensor) -> torch.Tensor:
    """model.InstanceNorm3d's channels-last form before 2026-12-02 (one `var_mean`, one `addcmul`),
    kept here as the reference for the group-norm form that replaced it."""
    if x.is_cuda or x.dim() != 5 or not x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.nn.InstanceNorm3d.forward(self, x)
    var, mean = torch.var_mean(x, dim=(2, 3, 4), keepdim=True, correction=0)
    scale = torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1, 1)
    return torch.addcmul(self.bias.view(1, -1, 1, 1, 1) - mean * scale, x, scale)


NORMS = {"kernel": torch.nn.InstanceNorm3d.forward, "var_mean": var_mean_norm}


@contextmanager
def layout(fmt: torch.memory_format, norm: str | None = None):
    """Run the project's code with `fmt` as the CPU's activation layout; `norm`: model.InstanceNorm3d
    replaced by PyTorch's own kernel ("kernel") or by its previous channels-last form ("var_mean")."""
    import inference
    import model
    import weights
    modules = (fit, inference, weights)
    saved = [m.memory_format for m in modules], model.InstanceNorm3d.forward
    for m in modules:
        m.memory_format = lambda device: fmt
    if norm:
        model.InstanceNorm3d.forward = NORMS[norm]
    try:
        yield
    finally:
        for m, f in zip(modules, saved[0]):
            m.memory_format = f
        model.InstanceNorm3d.forward = saved[1]


@contextmanager
def cpu_bf16():
    """Run the project's code under CPU autocast to bf16 (the pipeline itself keeps fp32 on a CPU:
    runtime.resolve_precision): measured only where the CPU has native bf16 (AVX512-BF16 or AMX)."""
    import inference
    import predict
    import predictor
    saved = fit.autocast_for, inference.autocast_for, predict.resolve_precision, predictor.resolve_precision
    fit.autocast_for = inference.autocast_for = lambda device, precision: torch.autocast("cpu", torch.bfloat16)
    predict.resolve_precision = predictor.resolve_precision = lambda requested, device: "bf16"
    try:
        yield
    finally:
        fit.autocast_for, inference.autocast_for, predict.resolve_precision, predictor.resolve_precision = saved


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


def train_step(params, steps: int, precision: str = "fp32") -> dict:
    """Median seconds of the train stage's step (fit.build's parts, its loader's first batch)."""
    rt = Runtime(torch.device("cpu"), precision, 0, 1)
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


def predict_cases(weights: Path, cases: Path, out: Path, params_file: Path, compile: bool) -> dict:
    """predict.py end to end on every case under `cases`, with the evaluate stage's settings: seconds
    of the first case (a compiled network compiles there) and the median of the others."""
    import predict
    assert predict.main(["--weights", str(weights), "--input", str(cases), "--output", str(out), "--overwrite",
                         "--params", str(params_file), "--no-postprocessing",
                         "--compile" if compile else "--no-compile"]) == 0
    seconds = [c["seconds"] for c in json.loads((out / predict.RECORD_FILE).read_text())["cases"].values()]
    return {"s/case": statistics.median(seconds[1:] or seconds), "first case s": seconds[0]}


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
        configs = (("plain", torch.contiguous_format, "kernel"), ("channels-last", torch.channels_last_3d, None),
                   ("channels-last, var_mean norm", torch.channels_last_3d, "var_mean"))
        for name, fmt, norm in configs:
            with layout(fmt, norm):
                rows[f"train step, {name}"] = train_step(params, args.steps)
        native_bf16 = bool({"avx512_bf16", "amx_bf16"} & set(cpu_model().get("flags", [])))
        if native_bf16:
            with cpu_bf16():
                rows["train step, channels-last, bf16 autocast"] = train_step(params, args.steps, "bf16")
        if args.compile:
            compiled = load_params(params_file, {"train.compile": True})
            with layout(torch.channels_last_3d, "var_mean"):
                rows["train step, channels-last + compile, var_mean norm"] = train_step(compiled, args.steps)
            torch._dynamo.reset()   # Dynamo would reuse the graph compiled with the other norm
            rows["train step, channels-last + compile"] = train_step(compiled, args.steps)
        weights = Path(tmp) / "model.pt"
        from model import UNet3D
        from weights import current_spec, save, weights_payload
        net = UNet3D(params.model)
        save(weights, weights_payload(net.state_dict(), params.model, current_spec(params.train.patch, (2.0,) * 3),
                                      {}, 0, {}, {"training_data": {}, "code": {}, "versions": {}}))
        raw = Path(tmp) / "raw"
        predict_cases(weights, raw, Path(tmp) / "warm", params_file, False)   # warm-up: file caches, allocator
        for name, fmt, norm in configs:
            with layout(fmt, norm):
                rows[f"predict.py per case, {name}"] = predict_cases(weights, raw, Path(tmp) / name, params_file, False)
        if native_bf16:
            with cpu_bf16():
                rows["predict.py per case, channels-last, bf16 autocast"] = predict_cases(
                    weights, raw, Path(tmp) / "bf16", params_file, False)
        if args.compile:
            torch._dynamo.reset()
            with layout(torch.channels_last_3d, "var_mean"):
                rows["predict.py per case, channels-last + compile, var_mean norm"] = predict_cases(
                    weights, raw, Path(tmp) / "compiled_var_mean", params_file, True)
            torch._dynamo.reset()
            rows["predict.py per case, channels-last + compile"] = predict_cases(weights, raw, Path(tmp) / "compiled",
                                                                                 params_file, True)
    base_train, base_predict = rows["train step, plain"]["s/step"], rows["predict.py per case, plain"]["s/case"]
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
