"""Trained weights, the inference settings and the post-processing together: the one way the
postprocess and evaluate stages and predict.py turn an image into labels, so that their masks are the
same for the same case. Several weights files (the folds of a cross-validation) are an ensemble:
their probabilities are averaged, each fold's own sliding window and mirroring first, then the
post-processing, as nnU-Net ensembles its folds."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from errors import UserError
from inference import gate_enhancing, predict_probs, probs_to_labels
from params import EvaluateParams
import postprocessing
from postprocessing import Postprocessing
from runtime import resolve_precision
from weights import load_model


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the network is run: sliding-window overlap, windows per forward pass, 8-flip mirroring,
    autocast precision, torch.compile."""
    overlap: float
    batch: int
    mirror: bool
    precision: str
    compile: bool

    @classmethod
    def of(cls, evaluate: EvaluateParams, device: torch.device | str) -> Settings:
        """The evaluate stage's settings (params.yaml's `evaluate` section) on `device`."""
        return cls(evaluate.overlap, evaluate.batch, evaluate.mirror, resolve_precision("auto", device),
                   evaluate.compile)


class Predictor:
    """The network of a weights file, or the ensemble of several (every network stays in memory: the
    default one is 2 MB, nnU-Net's full-resolution one 120 MB), on `device`, run with `settings`,
    followed by `pp` (none by default). `compile_key` names the setting that asked for compilation
    in the one-line error of a machine that cannot compile."""

    def __init__(self, weights: Path | Sequence[Path], settings: Settings, device: torch.device | str,
                 pp: Postprocessing | None = None, compile_key: str = "evaluate.compile"):
        self.files = [Path(weights)] if isinstance(weights, (str, Path)) else [Path(w) for w in weights]
        if not self.files:
            raise UserError("no weights to predict with")
        loaded = [load_model(f, device, compile_key if settings.compile else None) for f in self.files]
        self.models = [model for model, _ in loaded]
        self.spec = loaded[0][1]
        for f, (_, spec) in zip(self.files[1:], loaded[1:]):
            if spec != self.spec:
                raise UserError(f"weights file {f} was trained with {spec}, but {self.files[0]} with {self.spec}: "
                                "an ensemble needs folds of one training setting (patch, spacing, regions)")
        self.settings = settings
        self.pp = pp or Postprocessing.none()

    def probs(self, image: np.ndarray | torch.Tensor, out_shape: tuple[int, int, int] | None = None,
              gated: bool = True) -> torch.Tensor:
        """Region probabilities (R, X, Y, Z) of an image prepared at the weights' spacing, resampled
        to `out_shape` (the case's own grid) when given; the mean over the ensemble's networks, with
        (`gated`) the enhancing tumour gated by the T1c when the post-processing asks for it."""
        s = self.settings
        total = None
        for model in self.models:
            probs = predict_probs(model, image, self.spec.patch, s.overlap, s.batch, s.mirror, s.precision,
                                  out_shape=out_shape)
            total = probs if total is None else total.add_(probs)
        total = total if len(self.models) == 1 else total.div_(len(self.models))
        return self._gate(total, image) if gated else total

    def _gate(self, probs: torch.Tensor, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """`probs` with the T1c gate of the post-processing applied (in place), if it has one."""
        gate = self.pp.enhancing_min_t1c_z
        return probs if gate is None else gate_enhancing(probs, self.spec.regions, image, gate)

    def labels(self, image: np.ndarray | torch.Tensor, out_shape: tuple[int, int, int],
               spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
        """The network's label map on the case's grid (`out_shape`, voxels of `spacing` mm) and the
        same after post-processing, the T1c gate included (the same array when nothing changed)."""
        probs = self.probs(image, out_shape, gated=False)
        raw = probs_to_labels(probs)
        cut = raw if self.pp.enhancing_min_t1c_z is None else probs_to_labels(self._gate(probs, image))
        return raw, postprocessing.apply(cut, self.pp, spacing)
