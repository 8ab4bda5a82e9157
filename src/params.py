"""Read params.yaml once into typed, frozen dataclasses.

Every stage calls `load_params()`. Unknown keys, missing keys, wrong types and out-of-range values
raise `ParamsError` naming the key, before any work starts. Paths in params.yaml are relative to the
repository root (the folder holding params.yaml) and are resolved here, in one place, and so is the
`tuned` value of Adam's keys (`resolve_tuned`: the tune stage's best value).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from errors import UserError
from files import read_json

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = ROOT / "params.yaml"


class ParamsError(UserError):
    """A key of params.yaml is unknown, missing, of the wrong type or out of range."""


def _range(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> dict[str, Any]:
    """Field metadata: allowed numeric range (closed unless *_open)."""
    return {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}


def _num(lo: float | None = None, hi: float | None = None, **kw: Any) -> Any:
    return field(metadata=_range(lo, hi, **kw))


Tuned = Literal["tuned"]
OPTIMIZER_KEYS = ("lr", "weight_decay", "beta1", "beta2")
BEST_PARAMS_FILE = "best_params.json"    # the tune stage's output, under paths.tune_dir


@dataclass(frozen=True)
class BaseParams:
    seed: int = _num(0)


@dataclass(frozen=True)
class PathsParams:
    """Every file and folder the stages share; dvc.yaml reads the same keys via ${paths.*}."""
    synthetic_dir: Path
    raw_dir: Path            # what preprocess reads: the synthetic set, or real BraTS 2024
    preprocessed_dir: Path
    models_dir: Path         # trained weights (DVC outputs)
    predictions_dir: Path    # the evaluate stage's test-set predictions, in BraTS format
    metrics_dir: Path
    model_card: Path         # MODEL_CARD.md, written by evaluate
    live_dir: Path           # DVCLive's folder: the train stage's curves and summary metrics
    tune_dir: Path           # the tune stage's best params, trials table and plots
    resume_dir: Path         # train's resume checkpoint: not a DVC output, deleted after a finished run


@dataclass(frozen=True)
class RandomiseParams:
    """Domain randomisation of the synthetic images (SynthSeg's idea): what the network must not rely
    on, drawn per image. 0 switches a draw off, and then nothing is drawn for it."""
    contrast: float = _num(0.0, 1.0)     # share of images whose tissue signals are drawn uniformly, in any order
    resolution: float = _num(0.0, 1.0)   # share of images acquired coarser (3D or thick 2D slices) and resampled back
    bias: float = _num(0.0, 2.0)         # extra bias field: std of its log, drawn uniformly up to this
    gamma: float = _num(0.0, 2.0)        # intensity non-linearity: (x / max) ** exp(N(0, gamma))
    noise: float = _num(0.0, 0.5)        # extra noise: std drawn uniformly up to this share of the signal


@dataclass(frozen=True)
class SynthesizeParams:
    patients: int = _num(1, 99999)
    visits: int = _num(1, 10)          # each patient gets 1..visits visits
    grid: tuple[int, int, int] = _num(16, 512)
    spacing_mm: float = _num(0.5, 4.0)
    workers: int = _num(1, 256)        # processes; the files do not depend on it
    randomise: RandomiseParams = field(default_factory=lambda: RandomiseParams(0.0, 0.0, 0.0, 0.0, 0.0))


Spacing = tuple[float, float, float]
Keep = Literal["keep"]


@dataclass(frozen=True)
class PreprocessParams:
    workers: int = _num(1, 256)
    on_error: Literal["fail", "skip"]
    val_fraction: float = _num(0.0, 1.0, hi_open=True)
    test_fraction: float = _num(0.0, 1.0, hi_open=True)
    edition: Literal["auto", "2024", "2023", "2021", "msd"]   # src/editions.py; auto: recognised per folder
    # Voxel size (mm) the network trains at: keep (the data's own), one number, or [x, y, z] (RAS axes).
    spacing_mm: float | Spacing | Keep = _num(0.1, 20.0)
    interpolation: Literal["cubic", "linear"]    # images, when resampled (labels: region by region, linear)

    @property
    def target_spacing(self) -> Spacing | None:
        """The spacing to resample to, None to keep each case's own."""
        if self.spacing_mm == "keep":
            return None
        if isinstance(self.spacing_mm, tuple):
            return self.spacing_mm
        return (self.spacing_mm,) * 3


@dataclass(frozen=True)
class ModelParams:
    """The U-Net's shape (src/model.py); checkpoints carry it so weights load without params.yaml."""
    base_width: int = _num(1, 512)
    max_width: int = _num(1, 2048)
    depth: int = _num(2, 8)
    norm: Literal["instance", "group", "batch"]
    deep_supervision: bool


@dataclass(frozen=True)
class LossParams:
    """Weights of the summed loss terms (0 switches a term off) and Tversky's FP/FN weights."""
    dice: float = _num(0.0)
    tversky: float = _num(0.0)
    bce: float = _num(0.0)
    tversky_alpha: float = _num(0.0, 1.0)
    tversky_beta: float = _num(0.0, 1.0)

    def __post_init__(self) -> None:
        if self.dice + self.tversky + self.bce == 0:
            raise ParamsError("train.loss: dice, tversky and bce are all 0; give at least one a weight")


@dataclass(frozen=True)
class TrainParams:
    # What training draws (initial weights, patch sampling, augmentation, modality dropout); base.seed
    # draws the data (synthetic set, splits, folds) and the tune stage's trials.
    seed: int = _num(0)
    epochs: int = _num(1, 100000)
    iterations_per_epoch: int = _num(1)
    batch_size: int = _num(1, 1024)
    patch: tuple[int, int, int] = _num(8, 512)
    foreground_fraction: float = _num(0.0, 1.0)
    augment: Literal["none", "light", "full"]   # src/augment.py
    modality_dropout: float = _num(0.0, 1.0)    # share of patches with one modality blanked (0 = its mean)
    loss: LossParams
    schedule: Literal["none", "poly", "cosine"]
    precision: Literal["auto", "bf16", "fp16", "fp32"]   # auto: bf16 on CUDA, fp32 on CPU
    compile: bool
    deterministic: bool
    init_weights: str                   # "" = random; else a weights file whose tensors start the run
    # Cross-validation folds to train, [0, 1, ..., K-1] (a list, so that dvc.yaml's matrix makes one
    # stage per fold: train@0 ... train@K-1). [0]: one model on the train/val split.
    folds: tuple[int, ...] = _num(0, 99)
    workers: int = _num(0, 256)
    val_every: int = _num(1)
    val_overlap: float = _num(0.0, 1.0, hi_open=True)
    val_batch: int = _num(1, 256)
    mlflow: bool
    mlflow_log_model: bool              # upload the network with mlflow.pytorch.log_model (and a signature)
    mlflow_model_name: str              # "" = do not register; else the registered model's name
    wandb: Literal["offline", "online", "disabled"]
    experiment: str


@dataclass(frozen=True)
class SearchRange:
    low: float
    high: float
    log: bool

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ParamsError(f"a tune range needs low < high, got low {self.low}, high {self.high}")
        if self.log and self.low <= 0:
            raise ParamsError(f"a log-scale tune range needs low > 0, got {self.low}")


@dataclass(frozen=True)
class TuneParams:
    trials: int = _num(0, 100000)       # 0 skips tuning
    startup_trials: int = _num(1, 100000)  # random trials before TPE models the results
    epochs: int = _num(1, 100000)       # per trial
    pruner: Literal["median", "hyperband", "none"]
    storage: str                        # "" = SQLite at the repository root; a SQLAlchemy URL; journal:PATH
    study: str
    lr: SearchRange
    weight_decay: SearchRange
    beta1: SearchRange
    beta2: SearchRange


@dataclass(frozen=True)
class EvaluateParams:
    overlap: float = _num(0.0, 1.0, hi_open=True)
    batch: int = _num(1, 256)
    mirror: bool
    compile: bool
    overlays: int = _num(0, 1000)


@dataclass(frozen=True)
class PostprocessParams:
    """src/postprocess.py: the minimum component volumes (mm³) each rule may pick from; 0 = off."""
    candidates_mm3: tuple[float, ...] = _num(0.0)
    candidates_fraction: tuple[float, ...] = _num(0.0, 1.0)   # for WT_rel: of the largest WT component
    min_gain: float = _num(0.0, 1.0)    # a rule is switched on only if it raises the score by more
    enhancing_min_t1c_z: float | None = _num(-5.0, 10.0)   # ET only where the z-scored T1c is above it; null: off


@dataclass(frozen=True)
class Params:
    base: BaseParams
    paths: PathsParams
    # Adam's hyperparameters stay top-level so that `dvc exp run -S lr=...` works as users type it.
    # A number is used as it is; "tuned" takes the tune stage's best value (`resolve_tuned`).
    lr: float | Tuned = _num(0.0, 1.0, lo_open=True)
    weight_decay: float | Tuned = _num(0.0, 1.0)
    beta1: float | Tuned = _num(0.0, 1.0, hi_open=True)
    beta2: float | Tuned = _num(0.0, 1.0, hi_open=True)
    synthesize: SynthesizeParams
    preprocess: PreprocessParams
    model: ModelParams
    tune: TuneParams
    train: TrainParams
    postprocess: PostprocessParams
    evaluate: EvaluateParams

    def __post_init__(self) -> None:
        if self.model.base_width > self.model.max_width:
            raise ParamsError("model.base_width must not exceed model.max_width")
        edge = 2 ** (self.model.depth - 1)
        if any(p % edge for p in self.train.patch):
            raise ParamsError(f"train.patch {list(self.train.patch)}: every edge must be a multiple of "
                              f"2^(model.depth - 1) = {edge}, so that the U-Net's levels line up")
        if self.tune.trials > 1 and self.tune.startup_trials >= self.tune.trials:
            raise ParamsError(f"tune.startup_trials ({self.tune.startup_trials}) must be below tune.trials "
                              f"({self.tune.trials}): otherwise every trial is random and TPE never runs")
        if self.train.mlflow_model_name and not self.train.mlflow_log_model:
            raise ParamsError("train.mlflow_model_name needs train.mlflow_log_model: true (a model is "
                              "registered from the logged one)")
        if self.train.folds != tuple(range(len(self.train.folds))):
            raise ParamsError(f"train.folds {list(self.train.folds)}: must be [0, 1, ..., K-1] for K folds "
                              "([0] for one model on the train/val split; [0, 1, 2, 3, 4] for nnU-Net's five)")
        if self.preprocess.val_fraction + self.preprocess.test_fraction >= 1.0:
            raise ParamsError("preprocess.val_fraction + preprocess.test_fraction must be below 1 "
                              "so that some patients are left for training")


def load_params(path: Path | str = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """Load and validate params.yaml; `overrides` ({"synthesize.patients": 3}) is for tests and tools."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from a checkout of the repository") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of keys at the top level")
    params = _build(Params, apply_overrides(raw, overrides or {}), prefix="")
    return _resolve_paths(params, path.resolve().parent)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ParamsError(f"key {key!r} appears twice in one section of params.yaml (line "
                                  f"{key_node.start_mark.line + 1}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def apply_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys ({"train.epochs": 2, "lr": 1e-3}) in a params mapping, in place; returns it.
    The same edit as `dvc exp run -S key=value`, for tests and tools that write a params file."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return raw


def resolve_tuned(params: Params) -> Params:
    """Params with every `tuned` optimizer key replaced by the tune stage's best value.

    Precedence: a number in params.yaml (or from `dvc exp run -S lr=...`) always wins; `tuned` reads
    `<tune_dir>/best_params.json`."""
    wanted = [k for k in OPTIMIZER_KEYS if getattr(params, k) == "tuned"]
    if not wanted:
        return params
    path = params.paths.tune_dir / BEST_PARAMS_FILE
    best = read_json(path, "the tune stage's best params", stage="tune").get("best") or {}
    missing = [k for k in wanted if k not in best]
    if missing:
        raise UserError(f"{', '.join(missing)}: `tuned` in params.yaml, but {path} has no tuned value "
                        f"(tune.trials is {params.tune.trials}); set a number, e.g. `dvc exp run -S "
                        f"{missing[0]}=...`, or run tuning with tune.trials > 0")
    return dataclasses.replace(params, **{k: float(best[k]) for k in wanted})


def flat_params(params: Params) -> dict[str, Any]:
    """What a training run logs and its weights carry: optimizer, data seed, model and train params
    (the training seed is `train.seed`), with dotted keys (`train.loss.dice`)."""
    out: dict[str, Any] = {k: getattr(params, k) for k in OPTIMIZER_KEYS}
    out["base.seed"] = params.base.seed
    for section in ("model", "train"):
        for key, value in dataclasses.asdict(getattr(params, section)).items():
            if isinstance(value, dict):
                out.update({f"{section}.{key}.{k}": v for k, v in value.items()})
            else:
                out[f"{section}.{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def _resolve_paths(params: Params, root: Path) -> Params:
    paths = {f.name: root / getattr(params.paths, f.name) for f in dataclasses.fields(PathsParams)}
    return dataclasses.replace(params, paths=PathsParams(**paths))


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "params.yaml"
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ParamsError(f"unknown key {prefix}{unknown[0]} in params.yaml; known keys here: "
                          f"{', '.join(prefix + n for n in names)}")
    values = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if f.name not in raw:
            raise ParamsError(f"missing key {key} in params.yaml")
        values[f.name] = _convert(hints[f.name], raw[f.name], key, f.metadata)
    return cls(**values)


def _convert(tp: Any, value: Any, key: str, meta: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, int) and not isinstance(value, bool) and str(value) in choices:
            value = str(value)        # `edition: 2021` (YAML reads a number) means the choice "2021"
        if value not in choices:
            raise ParamsError(f"{key}: expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):  # e.g. `float | Literal["tuned"]`: first that fits
        errors = []
        for alternative in typing.get_args(tp):
            try:
                return _convert(alternative, value, key, meta)
            except ParamsError as e:
                if alternative is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                    raise    # a number out of range: that is the one thing to say
                errors.append(str(e).removeprefix(f"{key}: "))
        raise ParamsError(f"{key}: {'; or '.join(errors)}")
    if origin is tuple and typing.get_args(tp)[1:] == (Ellipsis,):
        if not isinstance(value, (list, tuple)) or not value:
            raise ParamsError(f"{key}: expected a non-empty list, got {value!r}")
        return tuple(_convert(typing.get_args(tp)[0], v, f"{key}[{i}]", meta) for i, v in enumerate(value))
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ParamsError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, f"{key}[{i}]", meta) for i, (a, v) in enumerate(zip(args, value)))
    if tp is type(None):
        if value is not None:
            raise ParamsError(f"{key}: expected null, got {value!r}")
        return None
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ParamsError(f"{key}: expected a path string, got {value!r}")
        return Path(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
        return _check_range(value, key, meta)
    if tp is float:
        return _check_range(_to_float(value, key), key, meta)
    raise TypeError(f"params.py cannot read type {tp} of {key}")  # a bug in this file, not in params


def _to_float(value: Any, key: str) -> float:
    # `dvc exp run -S lr=1e-5` writes `lr: 1e-05`, which YAML 1.1 (PyYAML) reads as a string.
    if isinstance(value, bool):
        raise ParamsError(f"{key}: expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ParamsError(f"{key}: expected a number, got the text {value!r}") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParamsError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def _check_range(value: float, key: str, meta: Any) -> Any:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        raise ParamsError(f"{key}: {value!r} is out of range; must be {'>' if meta.get('lo_open') else '≥'} {lo}")
    if hi is not None and (value > hi or (meta.get("hi_open") and value == hi)):
        raise ParamsError(f"{key}: {value!r} is out of range; must be {'<' if meta.get('hi_open') else '≤'} {hi}")
    return value
