"""The commands the documentation gives are valid: the GPU-sized params set passes params validation, and
the real-data CPU recipe is what bench/real.py measures."""

from __future__ import annotations

import re
import shlex

import torch
import yaml

from helpers import ROOT
from model import UNet3D
from params import load_params



RECIPES = ROOT / "docs" / "real-data.md"      # the real-data page holds the CPU and GPU recipes


def overrides_of(pattern: str, what: str) -> dict:
    """The `-S key=value` pairs of the recipe page's command that `pattern` finds."""
    text = RECIPES.read_text()
    command = re.search(pattern, text, re.S)
    assert command, f"{RECIPES.name} lost its {what} `dvc exp run` command"
    words = shlex.split(command.group(1).replace("\\\n", " "))
    pairs = [words[i + 1] for i, w in enumerate(words) if w == "-S"]
    return {key: yaml.safe_load(value) for key, value in (p.split("=", 1) for p in pairs)}


def gpu_overrides() -> dict:
    return overrides_of(r"```bash\n(dvc exp run -S paths\.raw_dir=data/BraTS2024-GLI.*?)\n```", "GPU-sized")


def test_gpu_sized_params_are_valid_and_build_the_nnunet_sized_network():
    overrides = gpu_overrides()
    assert overrides["train.patch"] == [128, 128, 128] and overrides["model.max_width"] == 320
    params = load_params(ROOT / "params.yaml", overrides)
    assert params.train.precision == "bf16" and params.train.deterministic
    assert params.train.folds == (0, 1, 2, 3, 4)                # nnU-Net's five folds on a GPU
    with torch.device("meta"):  # the full-size network, without allocating its memory
        model = UNet3D(params.model)
    assert 30.9e6 < sum(p.numel() for p in model.parameters()) < 31.3e6


def test_real_data_cpu_recipe_is_valid_and_is_what_bench_real_measures():
    import importlib.util
    overrides = overrides_of(r"(dvc exp run -S paths\.raw_dir=data/BraTS2021 -S preprocess\.spacing_mm=2\.0.*?)\n   ```",
                             "real-data CPU")
    params = load_params(ROOT / "params.yaml", overrides)
    assert params.preprocess.target_spacing == (2.0, 2.0, 2.0) and params.train.init_weights
    spec = importlib.util.spec_from_file_location("bench_real", ROOT / "bench" / "real.py")
    real = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real)
    for key, value in real.CPU_RECIPE.items():       # the documented figures come from these settings
        given = overrides[key]
        assert (float(given) if isinstance(value, float) else given) == value, key   # YAML 1.1 reads 1e-5 as text


def test_bench_recipe_trains_the_readme_gpu_recipe():
    """bench/recipe.py's settings are the GPU recipe's (less folds, tuning and epochs)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_recipe", ROOT / "bench" / "recipe.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    readme = gpu_overrides()
    assert {key: readme[key] for key in recipe.GPU_RECIPE} == recipe.GPU_RECIPE
