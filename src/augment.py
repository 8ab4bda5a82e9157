"""Data augmentation of training patches: drawn per sample in the loader, applied on the device.

The loader's workers only cut and draw: each sample's random numbers come from its own generator,
seeded per sample (src/dataset.py), and are packed into a `Draw`. The training step applies the
draws to the batch on the training device (`to_batch`), where resampling a rotated patch costs
microseconds instead of the ~0.5 s of a CPU core it takes for 4 × 128³ voxels.

Sets (`train.augment`):
  none   the patch as cut.
  light  flips on each axis, per-channel intensity scale (×0.9–1.1) and shift (±0.1 std): the
         2-core CPU default.
  full   nnU-Net's default set with its probabilities per sample (per channel where it says so):
         rotation about all three axes (±30°, p 0.2) and scaling (0.7–1.4, p 0.2) applied while the
         patch is sampled from the case (image trilinear, labels nearest), Gaussian noise (variance
         ≤ 0.1, p 0.1), Gaussian blur (σ 0.5–1 voxel, p 0.2, each channel 0.5), brightness
         (×0.75–1.25, p 0.15), contrast (×0.75–1.25 about the mean, range kept, p 0.15), simulated low
         resolution (zoom 0.5–1, nearest down, trilinear up, p 0.25, each channel 0.5), inverted gamma
         (p 0.1) and gamma (p 0.3), both 0.7–1.5 keeping mean and std, then flips (p 0.5 per axis).
Differences from nnU-Net: trilinear instead of cubic resampling, for rotation and low resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "light", "full")

P_ROTATE, MAX_ANGLE = 0.2, math.radians(30)
P_SCALE, SCALE = 0.2, (0.7, 1.4)
P_NOISE, NOISE_VARIANCE = 0.1, (0.0, 0.1)
P_BLUR, P_BLUR_CHANNEL, BLUR_SIGMA = 0.2, 0.5, (0.5, 1.0)
P_BRIGHTNESS, BRIGHTNESS = 0.15, (0.75, 1.25)
P_CONTRAST, CONTRAST = 0.15, (0.75, 1.25)
P_LOWRES, P_LOWRES_CHANNEL, LOWRES_ZOOM = 0.25, 0.5, (0.5, 1.0)
P_GAMMA_INVERTED, P_GAMMA, GAMMA = 0.1, 0.3, (0.7, 1.5)


@dataclass
class Draw:
    """One sample's augmentation. `matrix`/`offset` map a patch voxel o to the cut region's voxel
    offset + matrix @ o (None: the region is the patch). Per-channel lists hold None where a
    transform is off for that channel."""
    matrix: np.ndarray | None = None
    offset: np.ndarray | None = None
    flips: tuple[bool, bool, bool] = (False, False, False)
    scale: list[float] | None = None       # light: x * scale + shift, per channel
    shift: list[float] | None = None
    noise: tuple[float, int] | None = None  # (std, seed of the noise field)
    blur: list[float | None] = field(default_factory=list)
    brightness: list[float] | None = None
    contrast: list[float] | None = None
    lowres: list[float | None] = field(default_factory=list)
    gamma_inverted: list[float] | None = None
    gamma: list[float] | None = None
    dropped: int | None = None             # modality dropout: this channel becomes 0 (the head's mean)


def rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix about the three array axes by `angles` (radians), applied x, then y, then z."""
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def draw_spatial(rng: np.random.Generator) -> np.ndarray | None:
    """The 3×3 matrix from patch offsets to case offsets (rotation × scale), or None for a plain cut."""
    rotate, scale = rng.random() < P_ROTATE, rng.random() < P_SCALE
    angles, factor = rng.uniform(-MAX_ANGLE, MAX_ANGLE, 3), rng.uniform(*SCALE)
    if not (rotate or scale):
        return None
    return rotation(angles if rotate else np.zeros(3)) * (factor if scale else 1.0)


def region_for(matrix: np.ndarray, centre: np.ndarray, patch: tuple[int, int, int],
               shape: tuple[int, int, int]) -> tuple[tuple[slice, ...], np.ndarray]:
    """The box of a case of `shape` that a patch centred on `centre` along `matrix` samples (one voxel
    of margin for interpolation, clipped to the case), and the offset of patch voxel 0 in that box."""
    half = (np.array(patch) - 1) / 2
    corners = np.array(np.meshgrid(*[[0, p - 1] for p in patch], indexing="ij")).reshape(3, -1).T
    reach = (corners - half) @ matrix.T + centre
    lo = np.clip(np.floor(reach.min(0)).astype(int) - 1, 0, np.array(shape) - 1)
    hi = np.clip(np.ceil(reach.max(0)).astype(int) + 2, lo + 1, np.array(shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), centre - lo - matrix @ half


def _gamma_value(rng: np.random.Generator) -> float:
    """nnU-Net's draw: half the time below 1, half above, so 1 is the median."""
    below, low, high = rng.random() < 0.5, rng.uniform(GAMMA[0], 1.0), rng.uniform(1.0, GAMMA[1])
    return float(low if below else high)


def draw_intensity(rng: np.random.Generator, channels: int, mode: str) -> Draw:
    """Flips and intensity changes of one sample for `mode` (the spatial part is drawn separately)."""
    d = Draw()
    if mode == "light":
        d.flips = tuple(bool(rng.random() < 0.5) for _ in range(3))
        d.scale = rng.uniform(0.9, 1.1, channels).tolist()
        d.shift = rng.uniform(-0.1, 0.1, channels).tolist()
        return d
    if mode != "full":
        return d
    if rng.random() < P_NOISE:
        d.noise = (math.sqrt(rng.uniform(*NOISE_VARIANCE)), int(rng.integers(2 ** 62)))
    if rng.random() < P_BLUR:
        d.blur = [float(s) if rng.random() < P_BLUR_CHANNEL else None
                  for s in rng.uniform(*BLUR_SIGMA, channels)]
    if rng.random() < P_BRIGHTNESS:
        d.brightness = rng.uniform(*BRIGHTNESS, channels).tolist()
    if rng.random() < P_CONTRAST:
        d.contrast = rng.uniform(*CONTRAST, channels).tolist()
    if rng.random() < P_LOWRES:
        d.lowres = [float(z) if rng.random() < P_LOWRES_CHANNEL else None
                    for z in rng.uniform(*LOWRES_ZOOM, channels)]
    if rng.random() < P_GAMMA_INVERTED:
        d.gamma_inverted = [_gamma_value(rng) for _ in range(channels)]
    if rng.random() < P_GAMMA:
        d.gamma = [_gamma_value(rng) for _ in range(channels)]
    d.flips = tuple(bool(rng.random() < 0.5) for _ in range(3))
    return d


# ---- on the device -------------------------------------------------------------------------------

def resample(region: torch.Tensor, label: torch.Tensor, matrix: np.ndarray, offset: np.ndarray,
             patch: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample a (C, *patch) image (trilinear) and (*patch) labels (nearest) from a cut region: patch
    voxel o reads region voxel offset + matrix @ o; zero outside the region."""
    device = region.device
    axes = [torch.arange(p, device=device, dtype=torch.float32) for p in patch]
    o = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)                     # (P, P, P, 3)
    m = torch.as_tensor(matrix, dtype=torch.float32, device=device)
    q = o @ m.T + torch.as_tensor(offset, dtype=torch.float32, device=device)          # region voxels
    size = torch.tensor(region.shape[1:], dtype=torch.float32, device=device)
    grid = (2 * q / (size - 1).clamp_min(1) - 1).flip(-1)[None]   # grid_sample wants (z, y, x) order
    x = F.grid_sample(region[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    y = F.grid_sample(label[None, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=True)
    return x, y[0, 0].round().to(torch.uint8)


def _blur(channel: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter (±3σ), zero beyond the edges."""
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, device=channel.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = channel[None, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        padding = [0, 0, 0]
        padding[axis] = radius
        x = F.conv3d(x, kernel.view(shape), padding=tuple(padding))
    return x[0, 0]


def _low_resolution(channel: torch.Tensor, zoom: float) -> torch.Tensor:
    small = [max(1, round(n * zoom)) for n in channel.shape]
    down = F.interpolate(channel[None, None], size=small, mode="nearest")
    return F.interpolate(down, size=tuple(channel.shape), mode="trilinear", align_corners=False)[0, 0]


def _gamma(channel: torch.Tensor, g: float, invert: bool) -> torch.Tensor:
    """channel ** g on its own [min, max] range, then moved back to its former mean and std."""
    c = -channel if invert else channel
    mean, std = c.mean(), c.std(unbiased=False)
    low = c.min()
    span = c.max() - low + 1e-7
    c = ((c - low) / span) ** g * span + low
    c = (c - c.mean()) / (c.std(unbiased=False) + 1e-8) * std + mean
    return -c if invert else c


def apply(x: torch.Tensor, y: torch.Tensor, d: Draw, patch: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample on its device: cut region (C, ...) and labels in, augmented float32 (C, *patch)
    image and uint8 (*patch) labels out."""
    if d.matrix is not None:
        x, y = resample(x, y, d.matrix, d.offset, patch)
    else:
        x = x.float()
    if d.scale is not None:
        x = x * _per_channel(d.scale, x) + _per_channel(d.shift, x)
    if d.noise is not None:
        generator = torch.Generator(device=x.device).manual_seed(d.noise[1])
        x = x + torch.randn(x.shape, generator=generator, device=x.device) * d.noise[0]
    x = torch.stack([_blur(c, s) if s else c for c, s in zip(x, d.blur)]) if d.blur else x
    if d.brightness is not None:
        x = x * _per_channel(d.brightness, x)
    if d.contrast is not None:
        low, high = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = torch.minimum(torch.maximum((x - mean) * _per_channel(d.contrast, x) + mean, low), high)
    x = torch.stack([_low_resolution(c, z) if z else c for c, z in zip(x, d.lowres)]) if d.lowres else x
    for gammas, invert in ((d.gamma_inverted, True), (d.gamma, False)):
        if gammas is not None:
            x = torch.stack([_gamma(c, g, invert) for c, g in zip(x, gammas)])
    if d.dropped is not None:
        x = x.clone()
        x[d.dropped] = 0.0
    dims = [axis for axis, f in enumerate(d.flips) if f]
    if dims:
        x, y = x.flip([a + 1 for a in dims]), y.flip(dims)
    return x, y


def _per_channel(values: list[float], x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=x.device).view(-1, 1, 1, 1)


def collate(samples: list) -> tuple[list[torch.Tensor], list[torch.Tensor], list[Draw]]:
    """DataLoader collate: regions differ in size when rotated or scaled, so they stay a list."""
    xs, ys, draws = zip(*samples)
    return list(xs), list(ys), list(draws)


def to_batch(batch: tuple[list[torch.Tensor], list[torch.Tensor], list[Draw]], device: torch.device,
             patch: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a collated batch to `device` and augment it there: (B, C, *patch) float32, (B, *patch) uint8."""
    xs, ys, draws = batch
    out = [apply(x.to(device, non_blocking=True), y.to(device, non_blocking=True), d, patch)
           for x, y, d in zip(xs, ys, draws)]
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])
