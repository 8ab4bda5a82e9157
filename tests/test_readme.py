"""The commands the README gives are valid: the GPU-sized params set passes params validation."""

from __future__ import annotations

import re
import shlex

import torch
import yaml

from helpers import ROOT
from model import UNet3D
from params import load_params



def gpu_overrides() -> dict:
    text = (ROOT / "README.md").read_text()
    command = re.search(r"```bash\n(dvc exp run -S paths\.raw_dir=data/BraTS2024-GLI.*?)\n```", text, re.S)
    assert command, "the README lost its GPU-sized `dvc exp run` command"
    words = shlex.split(command.group(1).replace("\\\n", " "))
    pairs = [words[i + 1] for i, w in enumerate(words) if w == "-S"]
    return {key: yaml.safe_load(value) for key, value in (p.split("=", 1) for p in pairs)}


def test_gpu_sized_params_are_valid_and_build_the_nnunet_sized_network():
    overrides = gpu_overrides()
    assert overrides["train.patch"] == [128, 128, 128] and overrides["model.max_width"] == 320
    params = load_params(ROOT / "params.yaml", overrides)
    assert params.train.precision == "bf16" and params.train.deterministic
    with torch.device("meta"):  # the full-size network, without allocating its memory
        model = UNet3D(params.model)
    assert 30.9e6 < sum(p.numel() for p in model.parameters()) < 31.3e6
