"""Where and how the network runs: device, numeric precision, determinism, the DDP process group.

`resolve_precision` is the one place that decides bf16 / fp16 / fp32: training, validation,
evaluation, prediction and the benchmarks all ask it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch._dynamo.exc
import torch._inductor.exc
import torch.distributed as dist
from torch import nn

from errors import SetupError


@dataclass
class Runtime:
    device: torch.device
    precision: str        # what autocast uses: bf16 | fp16 | fp32
    rank: int
    world: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """bf16 | fp16 | fp32 for a params value (auto | bf16 | fp16 | fp32) on `device`.

    Autocast is used on CUDA only: `auto` is bf16 there, and every request is fp32 on the CPU. Even a
    CPU with native bf16 (AVX512-BF16) trained slower in bf16 than in fp32 (bench/cpu.py, BENCHMARKS.md),
    and masks computed in fp32 do not depend on whether the CPU has bf16."""
    if torch.device(device).type != "cuda":
        return "fp32"
    return "bf16" if requested == "auto" else requested


def memory_format(device: torch.device | str) -> torch.memory_format:
    """How the network's activations are laid out on `device`, training and inference alike:
    channels-last on the CPU, where oneDNN's 3D convolutions run faster in it and model.InstanceNorm3d
    keeps it (bench/cpu.py); contiguous on CUDA, where the normalisation would convert every
    channels-last activation back."""
    return torch.channels_last_3d if torch.device(device).type == "cpu" else torch.contiguous_format


def autocast_for(device: torch.device, precision: str):
    """Autocast context for `precision` (bf16/fp16) on CUDA; fp32 and CPU run without it."""
    if device.type != "cuda" or precision == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup_runtime(precision: str, deterministic: bool, slot: int = 0) -> Runtime:
    """Device, precision, determinism and (under torchrun) the process group of a training process.
    Under torchrun each process takes the GPU of its LOCAL_RANK; a single process takes GPU
    `slot` modulo the GPUs it sees (the train stage passes its fold, so folds run side by side, as
    `dvc queue start -j N` starts them, spread over the GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    if deterministic:
        # cuBLAS needs this before its first call to give reproducible results
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    if cuda:
        local = os.environ.get("LOCAL_RANK")
        device = torch.device("cuda", int(local) if local is not None else slot % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Runtime(device, resolve_precision(precision, device), rank, world)


@contextmanager
def compile_errors(key: str | None):
    """torch.compile builds its kernels on the first call: a machine that cannot (no C++ compiler on
    a CPU, no Triton on a GPU) gets one line naming the params key `key`, not a compiler's log."""
    if key is None:
        yield
        return
    try:
        yield
    except (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise SetupError(f"{key}: torch.compile failed on this machine ({first[:200]}); on a CPU it needs "
                        "a C++ compiler (g++ or clang++, or the one $CXX names) and Python's headers; install "
                        f"them or turn {key} off") from None


class Compiled(nn.Module):
    """A network for inference, compiled by torch.compile (the same parameters, which must not change
    afterwards). It is compiled for one input shape: `fixed_shapes` tells inference.predict_probs to
    fill a short last batch of windows rather than compile again. Shapes are static
    (`dynamic=False`): another window size compiles again rather than generalising the first
    compilation to symbolic sizes, which Inductor could not lower here. A failure to compile is one
    line naming `key`."""

    fixed_shapes = True

    def __init__(self, model: nn.Module, key: str):
        super().__init__()
        self.net = torch.compile(model, dynamic=False)
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with compile_errors(self.key):
            return self.net(x)
