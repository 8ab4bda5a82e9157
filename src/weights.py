"""The weights file: what the train stage writes and what evaluate and predict read.

`torch.load(path, weights_only=True)` gives a plain dict:

    format      WEIGHTS_FORMAT (an integer; a file of another format is refused with a clear error)
    state_dict  the network's tensors
    model       the network's config (params.ModelParams as a dict): builds the network without params.yaml
    inference   what inference needs and must match (InferenceSpec): patch, regions (output channels),
                modalities (input channels), spacing_mm (training data), edition (label table)
    params      the training params, flattened (`train.patch`, `lr`, ...): a record, read by nothing
    epoch, val  the epoch these weights are from, and its validation scores
    provenance  where they come from (`provenance()`): the training data's hash as dvc.lock records
                it and its BraTS edition (src/editions.py), the weights training started from
                (`train.init_weights`: path and SHA-256, or None), a SHA-256 of the training code (the train stage's src/ files, as dvc.yaml lists
                them) and the versions of Python, PyTorch and NumPy

The git commit is deliberately not written into the file: DVC's workflow trains first and commits
the code with the new dvc.lock afterwards, so the commit does not exist yet at training time, and a
recorded HEAD would make a fresh clone's rerun produce identical tensors in a file of another hash
(measured: dvc.lock changed in a clean clone). The commit of a weights file is the one whose dvc.lock
names its md5 (`git log -S <md5> --oneline -- dvc.lock`); the code digest ties the file to the code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from brats import EDITION, MODALITIES, MODEL_REGIONS
from errors import UserError
from files import atomic_write, file_sha256
from model import UNet3D
from params import ModelParams
from runtime import Compiled, memory_format

WEIGHTS_FORMAT = 3      # 3 added `provenance`
# The model set under paths.models_dir: one folder per cross-validation fold (`train.folds`), written by
# train@k, and the post-processing chosen for their ensemble (postprocessing.json, postprocess stage).
FOLDS_DIR = "folds"
WEIGHTS_FILE = "model.pt"     # in a fold's folder: the best weights by validation mean IoU
LAST_FILE = "last.pt"         # the last epoch's


def fold_dir(models_dir: Path, fold: int) -> Path:
    """The folder train@`fold` writes its weights into."""
    return Path(models_dir) / FOLDS_DIR / f"fold_{fold}"


def fold_weights(models_dir: Path, folds: tuple[int, ...] | list[int]) -> list[Path]:
    """The best weights of each of `folds` (train.folds)."""
    return [fold_dir(models_dir, k) / WEIGHTS_FILE for k in folds]


def weights_in(path: Path) -> list[Path]:
    """The weights files `path` names: itself when a file; in a folder, every fold's best weights
    (`folds/fold_*/model.pt` of a model set, or `fold_*/model.pt`) or its `model.pt`."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    for pattern in (f"{FOLDS_DIR}/fold_*/{WEIGHTS_FILE}", f"fold_*/{WEIGHTS_FILE}", WEIGHTS_FILE):
        found = sorted(path.glob(pattern), key=lambda p: (len(p.parent.name), p.parent.name))
        if found:
            return found
    raise UserError(f"{path} holds no weights ({FOLDS_DIR}/fold_K/{WEIGHTS_FILE}, fold_K/{WEIGHTS_FILE} or "
                    f"{WEIGHTS_FILE}): give a weights file or a model folder (`dvc pull` fetches the trained ones)")


@dataclass(frozen=True)
class InferenceSpec:
    patch: tuple[int, int, int]              # sliding-window size, as trained
    regions: tuple[str, ...]                 # output channels, brats.MODEL_REGIONS order
    modalities: tuple[str, ...]              # input channels, brats.MODALITIES order
    spacing_mm: tuple[float, float, float]   # voxel size of the training data: predict resamples to it
    edition: str                             # label table of the outputs, brats.EDITION (whatever the
                                             # training data's edition: all are read as 2024's labels)


def current_spec(patch: tuple[int, int, int], spacing_mm: tuple[float, float, float]) -> InferenceSpec:
    """The spec of a network trained now, by this code: its regions, modalities and edition."""
    return InferenceSpec(tuple(patch), MODEL_REGIONS, MODALITIES, tuple(spacing_mm), EDITION)


def data_hash(data_dir: Path, root: Path) -> str | None:
    """The hash dvc.lock (at `root`) records for the output folder `data_dir`; None outside DVC."""
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
        for stage in lock.get("stages", {}).values():
            for out in stage.get("outs", []):
                if (root / out["path"]).resolve() == Path(data_dir).resolve():
                    return out.get("md5")
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError):
        pass
    return None


def code_digest(root: Path, stage: str = "train") -> dict:
    """SHA-256 over the names and bytes of `stage`'s src/ files as dvc.yaml (at `root`) lists them;
    over every src/*.py where there is no such dvc.yaml."""
    root = Path(root)
    try:
        deps = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]["deps"]
        files = sorted(d for d in deps if d.startswith("src/") and d.endswith(".py"))
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        files = sorted(p.relative_to(root).as_posix() for p in (root / "src").glob("*.py"))
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    return {"sha256": digest.hexdigest(), "files": len(files)}


def provenance(data_dir: Path, root: Path, edition: str | None = None, init: Path | None = None) -> dict:
    """What a weights file records of its origin (see the module docstring); `edition`: the BraTS
    edition of the training data (src/editions.py), as preprocess recognised it; `init`: the weights
    file training started from (`train.init_weights`), recorded with its SHA-256."""
    def relative(p: Path) -> str:
        try:
            return str(Path(p).resolve().relative_to(Path(root).resolve()))
        except ValueError:
            return str(p)
    return {"training_data": {"path": relative(data_dir), "md5": data_hash(data_dir, root), "edition": edition},
            "init_weights": {"path": relative(init), "sha256": file_sha256(init)} if init else None,
            "code": code_digest(root),
            "versions": {"python": platform.python_version(), "torch": str(torch.__version__),
                         "numpy": str(np.__version__)}}


def weights_payload(state_dict: dict, model: ModelParams, spec: InferenceSpec, params: dict, epoch: int,
                    val: dict, origin: dict) -> dict:
    """The dict a weights file holds (tensors moved to the CPU)."""
    as_lists = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec).items()}
    return {"format": WEIGHTS_FORMAT, "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
            "model": dataclasses.asdict(model), "inference": as_lists, "params": params, "epoch": epoch,
            "val": val, "provenance": origin}


def save(path: Path, payload: dict) -> None:
    """Write a weights file (or any torch-saved dict) atomically."""
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read(path: Path) -> dict:
    """The checked contents of a weights file (tensors on the CPU)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a weights file: {folder_hint(path)}")
    if not path.exists():
        raise UserError(f"weights file {path} not found: run `dvc repro train`, or `dvc pull {path}` "
                        "to fetch trained weights from the remote")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated download, a file of another project
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            # torch suggests loading with weights_only=False, which runs any code the file holds: never
            why = "it holds Python objects besides tensors and plain values, so it is not a weights file of this project"
        else:
            why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        raise UserError(f"weights file {path} cannot be loaded ({why}); fetch it again with `dvc pull` or "
                        "retrain") from None
    found = saved.get("format", "none") if isinstance(saved, dict) else "none"
    if found != WEIGHTS_FORMAT:
        raise UserError(f"weights file {path} is not of format {WEIGHTS_FORMAT} (found format {found}: "
                        "written by an older version of this project, or by another project); retrain with "
                        "`dvc repro train`, or `dvc pull` the weights that match this commit")
    missing = [key for key in ("state_dict", "model", "inference", "provenance") if key not in saved]
    if missing:
        raise UserError(f"weights file {path} is of format {WEIGHTS_FORMAT} but lacks {', '.join(missing)} "
                        "(damaged or edited by hand?); fetch it again with `dvc pull` or retrain")
    return saved


def folder_hint(folder: Path) -> str:
    """What to give instead of a model folder where one weights file is needed."""
    try:
        found = weights_in(folder)
    except UserError:
        return f"give a weights file ({WEIGHTS_FILE}); {folder} holds none"
    return f"give a weights file in it, e.g. {found[0]}"


def load_state(model: torch.nn.Module, state_dict: dict, path: Path, key: str) -> None:
    """`state_dict` into `model`, or one line naming the tensors that are missing, extra or of
    another shape (weights of another network version)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    extra = [k for k in state_dict if k not in own]
    shaped = [f"{k} {tuple(state_dict[k].shape)} (this network: {tuple(own[k].shape)})" for k in own
              if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    problems = [f"{what} {', '.join(names[:3])}{' …' if len(names) > 3 else ''} ({len(names)})"
                for what, names in (("missing", missing), ("not in this network", extra), ("of another shape", shaped))
                if names]
    if not problems:
        try:
            model.load_state_dict(state_dict)
            return
        except Exception as e:      # a value that is not a tensor
            problems = [f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"]
    raise UserError(f"{key}: the tensors of {path} do not fit this network: {'; '.join(problems)}; give weights "
                    "trained with the same model section of params.yaml and this version of the code")


def load_model(path: Path, device: torch.device | str = "cpu",
               compile_key: str | None = None) -> tuple[torch.nn.Module, InferenceSpec]:
    """The network of a weights file, in eval mode on `device` in the device's memory format, and what
    inference needs to run it. With `compile_key` (the params key or flag that asked for it), the
    network is compiled (runtime.Compiled): on a CPU, inference about twice as fast per window after
    a compilation of 10-30 s (bench/cpu.py)."""
    path = Path(path)
    saved = read(path)
    try:
        info = saved["inference"]
        spec = InferenceSpec(tuple(info["patch"]), tuple(info["regions"]), tuple(info["modalities"]),
                             tuple(info["spacing_mm"]), info["edition"])
        model = UNet3D(ModelParams(**saved["model"]))
    except Exception as e:  # another model version, missing fields
        raise UserError(f"weights file {path} cannot be loaded ({type(e).__name__}: {e}); "
                        "fetch it again with `dvc pull` or retrain") from None
    load_state(model, saved["state_dict"], path, "--weights")
    expected = current_spec(spec.patch, spec.spacing_mm)
    for field in ("regions", "modalities", "edition"):
        if getattr(spec, field) != getattr(expected, field):
            raise UserError(f"weights file {path} was trained with {field} {getattr(spec, field)}, but this "
                            f"code uses {getattr(expected, field)}; retrain with `dvc repro train`")
    model = model.to(device, memory_format=memory_format(device)).eval()
    return (Compiled(model, compile_key) if compile_key else model), spec
