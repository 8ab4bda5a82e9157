"""The weights file: what the train stage writes and what evaluate and predict read.

`torch.load(path, weights_only=True)` gives a plain dict:

    format      WEIGHTS_FORMAT (an integer; a file of another format is refused with a clear error)
    state_dict  the network's tensors
    model       the network's config (params.ModelParams as a dict): builds the network without params.yaml
    inference   what inference needs and must match (InferenceSpec): patch, regions (output channels),
                modalities (input channels), spacing_mm (training data), edition (label table)
    params      the training params, flattened (`train.patch`, `lr`, ...): a record, read by nothing
    epoch, val  the epoch these weights are from, and its validation scores
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from brats import EDITION, MODALITIES, MODEL_REGIONS
from errors import UserError
from files import atomic_write
from model import UNet3D
from params import ModelParams

WEIGHTS_FORMAT = 2


@dataclass(frozen=True)
class InferenceSpec:
    patch: tuple[int, int, int]              # sliding-window size, as trained
    regions: tuple[str, ...]                 # output channels, brats.MODEL_REGIONS order
    modalities: tuple[str, ...]              # input channels, brats.MODALITIES order
    spacing_mm: tuple[float, float, float]   # voxel size of the training data
    edition: str                             # label table, brats.EDITION


def current_spec(patch: tuple[int, int, int], spacing_mm: tuple[float, float, float]) -> InferenceSpec:
    """The spec of a network trained now, by this code: its regions, modalities and edition."""
    return InferenceSpec(tuple(patch), MODEL_REGIONS, MODALITIES, tuple(spacing_mm), EDITION)


def weights_payload(state_dict: dict, model: ModelParams, spec: InferenceSpec, params: dict, epoch: int,
                    val: dict) -> dict:
    """The dict a weights file holds (tensors moved to the CPU)."""
    as_lists = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec).items()}
    return {"format": WEIGHTS_FORMAT, "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
            "model": dataclasses.asdict(model), "inference": as_lists, "params": params, "epoch": epoch,
            "val": val}


def save(path: Path, payload: dict) -> None:
    """Write a weights file (or any torch-saved dict) atomically."""
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[UNet3D, InferenceSpec]:
    """The network of a weights file, in eval mode on `device`, and what inference needs to run it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"weights file {path} not found: run `dvc repro train`, or `dvc pull {path}` "
                        "to fetch trained weights from the remote")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated download, a file of another project
        raise UserError(f"weights file {path} cannot be loaded ({type(e).__name__}: {e}); "
                        "fetch it again with `dvc pull` or retrain") from None
    if not isinstance(saved, dict) or saved.get("format") != WEIGHTS_FORMAT or "inference" not in saved:
        found = saved.get("format", "none") if isinstance(saved, dict) else "none"
        raise UserError(f"weights file {path} is not of format {WEIGHTS_FORMAT} (found format {found}: "
                        "written by an older version of this project, or by another one); retrain with "
                        "`dvc repro train`, or `dvc pull` the weights that match this commit")
    try:
        info = saved["inference"]
        spec = InferenceSpec(tuple(info["patch"]), tuple(info["regions"]), tuple(info["modalities"]),
                             tuple(info["spacing_mm"]), info["edition"])
        model = UNet3D(ModelParams(**saved["model"]))
        model.load_state_dict(saved["state_dict"])
    except Exception as e:  # another model version, missing fields
        raise UserError(f"weights file {path} cannot be loaded ({type(e).__name__}: {e}); "
                        "fetch it again with `dvc pull` or retrain") from None
    expected = current_spec(spec.patch, spec.spacing_mm)
    for field in ("regions", "modalities", "edition"):
        if getattr(spec, field) != getattr(expected, field):
            raise UserError(f"weights file {path} was trained with {field} {getattr(spec, field)}, but this "
                            f"code uses {getattr(expected, field)}; retrain with `dvc repro train`")
    return model.to(device).eval(), spec
