"""Trained weights, the inference settings and the post-processing together: the one way the
postprocess and evaluate stages and predict.py turn an image into labels, so that their masks are the
same for the same case."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from inference import predict_probs, probs_to_labels
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
    """A weights file's network on `device`, run with `settings`, followed by `pp` (none by default).
    `compile_key` names the setting that asked for compilation in the one-line error of a machine
    that cannot compile."""

    def __init__(self, weights: Path, settings: Settings, device: torch.device | str,
                 pp: Postprocessing | None = None, compile_key: str = "evaluate.compile"):
        self.model, self.spec = load_model(weights, device, compile_key if settings.compile else None)
        self.settings = settings
        self.pp = pp or Postprocessing.none()

    def probs(self, image: np.ndarray | torch.Tensor, out_shape: tuple[int, int, int] | None = None) -> torch.Tensor:
        """Region probabilities (R, X, Y, Z) of an image prepared at the weights' spacing, resampled
        to `out_shape` (the case's own grid) when given."""
        s = self.settings
        return predict_probs(self.model, image, self.spec.patch, s.overlap, s.batch, s.mirror, s.precision,
                             out_shape=out_shape)

    def labels(self, image: np.ndarray | torch.Tensor, out_shape: tuple[int, int, int],
               spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
        """The network's label map on the case's grid (`out_shape`, voxels of `spacing` mm) and the
        same after post-processing (the same array when nothing changed)."""
        raw = probs_to_labels(self.probs(image, out_shape))
        return raw, postprocessing.apply(raw, self.pp, spacing)
