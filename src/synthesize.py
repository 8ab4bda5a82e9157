"""Stage `synthesize`: write a synthetic BraTS-2024-like dataset in the official layout.

Real BraTS data is registration-gated, so the pipeline runs out of the box on cases made here:
a skull-stripped brain (zero outside it): a cerebrum with folded cortex, sulcal CSF, lateral
ventricles and deep grey nuclei, and below it the cerebellum and brainstem; a post-treatment glioma
with oedema (SNFH, bright on T2-FLAIR and T2, spreading further through white matter), an enhancing
rim (ET, bright on T1c), a necrotic core (NETC, dark on T1c, bright on T2 and often on FLAIR) and,
in some cases, a fluid-filled resection cavity (RC, CSF-like); FLAIR-bright white-matter lesions that
are not tumour (T1-iso, unlike oedema). Sizes and contrasts follow what 20 real BraTS 2018 cases
show (bench/sim2real.py, BENCHMARKS.md). Each case draws its own tissue contrast, and each image its
own bias field, texture, noise level, gain and, as often as BraTS' protocols acquire that modality
in 2D, thick-slice blur. Healthy tissue carries more fine structure than oedema, and the cerebellum
is T1-darker than the cerebrum's white matter, as in real scans. A threshold on one modality finds
the whole tumour no better than on real scans (tests/test_synthesize.py), so a model has to combine
them.

Patients get 1..`visits` visits that share anatomy while the tumour changes. Each case is drawn
from its own seed (base.seed, patient, visit), and files are written without timestamps, so the
same params give byte-identical files on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from brats import MODALITIES, SEG, case_id
from errors import run_stage
from files import atomic_folder
from nifti import write_nifti
from parallel import run_each
from params import RandomiseParams, SynthesizeParams, load_params

# Typical signal of each tissue in (t1n, t1c, t2w, t2f), relative to white matter on T1 ~ 0.85. The
# tumour's are set so that, z-scored over the head, they sit where 20 real BraTS 2018 cases put them
# (bench/results/sim2real.json): oedema and necrosis bright on FLAIR, enhancement about 1.6 std above
# the head on T1c, necrosis only moderately dark on T1. Each case draws its own signal around these
# (`case_signal`): real contrast varies from scan to scan, and the network must not learn one value.
TISSUE_SIGNAL: dict[str, tuple[float, float, float, float]] = {
    "wm":   (0.85, 0.80, 0.40, 0.50),
    "gm":   (0.62, 0.60, 0.60, 0.66),
    "csf":  (0.20, 0.18, 1.00, 0.12),
    "wmh":  (0.84, 0.80, 0.58, 0.88),   # FLAIR-bright lesion that is not tumour: T1-iso, T2 mild
    "vessel": (0.70, 1.15, 0.45, 0.45),  # enhancing vessels: bright on T1c only
    "snfh": (0.66, 0.56, 0.84, 1.00),
    "et":   (0.60, 0.98, 0.80, 0.90),
    "netc": (0.50, 0.50, 0.98, 0.90),
    "rc":   (0.22, 0.20, 0.98, 0.30),
}
# Per-case spread of each tissue's signal (std of its log): healthy tissue varies little between
# scans once z-scored; tumour tissue a lot (necrosis on FLAIR runs from dark to brighter than oedema).
SIGNAL_SPREAD = {"wm": 0.04, "gm": 0.07, "csf": 0.08, "wmh": 0.08, "vessel": 0.08,
                 "snfh": 0.08, "et": 0.10, "netc": 0.14, "rc": 0.10}
TISSUES = tuple(TISSUE_SIGNAL)
TISSUE_INDEX = {t: i for i, t in enumerate(TISSUES)}
TUMOUR_TISSUES = [TISSUE_INDEX[t] for t in ("snfh", "et", "netc")]
# Deep grey matter, one side (x > 0): centre and semi-axes in mm from the grid centre (MNI y -18, z 18).
# In a real scan these are FLAIR- and T2-brighter than the white matter around them, deep in the brain:
# without them a network learns that anything there brighter than white matter is oedema.
DEEP_GREY = (((11.0, 0.0, -12.0), (8.0, 14.0, 9.0)),     # thalamus
             ((22.0, 20.0, -16.0), (6.0, 16.0, 10.0)),   # putamen and globus pallidus
             ((13.0, 30.0, -6.0), (5.0, 8.0, 8.0)),      # caudate head
             ((38.0, 10.0, -14.0), (4.0, 22.0, 16.0)))   # insular cortex
# Share of images acquired as thick 2D slices (blurred along one axis when rendered). BraTS' scans
# (Menze et al. 2015, Bakas et al. 2017): T1 sagittal or axial 2D, 1-6 mm; T1c a 3D 1 mm acquisition;
# T2 and FLAIR 2D, 2-6 mm slices.
THICK_SLICES = {"t1n": 0.5, "t1c": 0.2, "t2w": 0.7, "t2f": 0.7}
NO_RANDOMISATION = RandomiseParams(contrast=0.0, resolution=0.0, bias=0.0, gamma=0.0, noise=0.0)
# World position (mm) of voxel (0, 0, 0) in FSL's MNI152 templates, at 1 mm and at 2 mm alike.
MNI_CORNER_MM = (90.0, -126.0, -72.0)


@dataclass(frozen=True)
class Tumour:
    centre_mm: np.ndarray     # (3,) position relative to the grid centre
    radius_mm: float          # core (ET + NETC) radius
    oedema_scale: float       # oedema radius / core radius
    rim_mm: float             # ET rim thickness
    has_et: bool
    has_rc: bool
    cavity_offset: np.ndarray  # (3,) unit vector from the tumour centre to the cavity


def mni_affine(spacing: float) -> np.ndarray:
    """FSL's MNI152 affine (LAS: x runs right to left) at isotropic `spacing`; any grid shares its corner."""
    affine = np.diag([-spacing, spacing, spacing, 1.0])
    affine[:3, 3] = MNI_CORNER_MM
    return affine


def smooth_noise(rng: np.random.Generator, grid: tuple[int, int, int], spacing: float,
                 scale_mm: float) -> np.ndarray:
    """Zero-mean, unit-std random field (float64) whose features are about `scale_mm` across.

    White noise on a coarse lattice (one knot per `scale_mm`) blended by separable Gaussian weights:
    much faster than filtering a full-size volume. float64 keeps the rounding in `render` identical
    across CPUs and BLAS builds.
    """
    field = rng.standard_normal([int(np.ceil(n * spacing / scale_mm)) + 3 for n in grid])
    for axis, n in enumerate(grid):
        knots = np.arange(field.shape[axis])
        position = np.arange(n) * spacing / scale_mm + 1.0    # in knot units
        weights = np.exp(-0.5 * ((position[:, None] - knots[None, :]) / 0.8) ** 2)  # (n, knots)
        field = np.moveaxis(np.tensordot(weights, field, axes=([1], [axis])), 0, axis)
    return (field - field.mean()) / (field.std() + 1e-12)


def coordinates(grid: tuple[int, int, int], spacing: float) -> list[np.ndarray]:
    """Millimetre offsets from the grid centre, broadcastable along each axis."""
    axes = [(np.arange(n) - (n - 1) / 2) * spacing for n in grid]
    return [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]


def soft(x: np.ndarray, width: float) -> np.ndarray:
    """A smooth step from 1 (x << 0) to 0 (x >> 0): partial-volume edges instead of hard ones."""
    return 1.0 / (1.0 + np.exp(np.clip(x / width, -30, 30)))


def anatomy(rng: np.random.Generator, grid: tuple[int, int, int], spacing: float,
            xyz: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brain mask, tissue fractions (T, X, Y, Z) for wm/gm/csf and normalised cerebral radius.

    The cerebrum: an ellipsoid, flatter below than above, with a folded cortex, CSF in the sulci under
    its surface and two lateral ventricles. Below and behind it the cerebellum, whose folia mix grey
    and white matter finely at 1-2 mm, and the brainstem: the inferior slices of a real scan, which a
    network that saw only an ellipsoid takes for tumour (most of the false positives of a model trained without
    them sat there on real cases: BENCHMARKS.md, synthetic to real).
    """
    size = rng.uniform(0.88, 1.04)
    semi = np.array([68.0, 86.0, 70.0]) * size * rng.uniform(0.96, 1.04, 3)
    shape_noise = smooth_noise(rng, grid, spacing, 40.0)
    semi_z = np.where(xyz[2] < 0, semi[2] * 0.74, semi[2])
    r = np.sqrt((xyz[0] / semi[0]) ** 2 + (xyz[1] / semi[1]) ** 2 + (xyz[2] / semi_z) ** 2) * (1 + 0.04 * shape_noise)
    folding = smooth_noise(rng, grid, spacing, 10.0)
    sulcal_csf = 1 - soft(r - 0.955 - 0.02 * folding, 0.008)  # CSF shell under the brain surface
    cortex = 1 - soft(r - 0.80 - 0.06 * folding, 0.015)
    # sulci reaching into the cortex: thin CSF sheets where a random field crosses zero, the fine
    # structure that makes healthy tissue the most textured part of a real scan
    sulci = soft(np.abs(smooth_noise(rng, grid, spacing, 9.0)) - 0.15, 0.04) * cortex * (r < 0.97)
    sulcal_csf = np.maximum(sulcal_csf, 0.9 * sulci)
    vents = np.zeros(grid, np.float64)
    for side in (-1, 1):  # two lateral ventricles beside the midline
        c = np.array([side * 10.0, 5.0, 12.0]) * rng.uniform(0.8, 1.2)
        ax = np.array([7.0, 28.0, 10.0]) * rng.uniform(0.7, 1.3)
        d = np.sqrt(sum(((x - ci) / ai) ** 2 for x, ci, ai in zip(xyz, c, ax)))
        vents = np.maximum(vents, soft(d - 1.0, 0.08))
    csf = np.clip(np.maximum(sulcal_csf, vents), 0, 1)

    def ellipsoid(centre: tuple[float, float, float], axes: tuple[float, float, float]) -> np.ndarray:
        c = np.asarray(centre) * size * rng.uniform(0.94, 1.06, 3)
        a = np.asarray(axes) * size * rng.uniform(0.92, 1.08, 3)
        return np.sqrt(sum(((x - ci) / ai) ** 2 for x, ci, ai in zip(xyz, c, a))) * (1 + 0.04 * shape_noise)

    r_cerebellum = ellipsoid((0.0, -50.0, -50.0), (48.0, 28.0, 20.0))
    r_stem = ellipsoid((0.0, -18.0, -46.0), (11.0, 12.0, 28.0))
    below = r >= 1.0
    folia = np.tanh(2.0 * smooth_noise(rng, grid, spacing, 4.0))
    cerebellum = below & (r_cerebellum < 1.0)
    stem = below & ~cerebellum & (r_stem < 1.0)
    cb_csf = 1 - soft(r_cerebellum - 0.93 - 0.03 * folia, 0.01)
    gm = np.clip(cortex * (1 - csf), 0, 1)
    for centre, axes in DEEP_GREY:   # both sides: thalamus, lentiform and caudate nuclei, insula
        for side in (-1, 1):
            nucleus = ellipsoid((side * centre[0], centre[1], centre[2]), axes)
            gm = np.maximum(gm, 0.85 * soft(nucleus - 1.0, 0.08) * (1 - csf))
    # the cerebellar cortex is mostly grey matter, with CSF in the fissures between the folia: darker
    # than the cerebrum's white matter on T1 and not brighter on FLAIR (bench/sim2real.py's profile)
    fissures = 0.8 * soft(np.abs(smooth_noise(rng, grid, spacing, 6.0)) - 0.15, 0.04)
    cb_csf = np.maximum(cb_csf, fissures)
    gm[cerebellum] = (0.78 + 0.2 * folia[cerebellum]) * (1 - cb_csf[cerebellum])
    gm[stem] = 0.2
    csf[cerebellum] = cb_csf[cerebellum]
    csf[stem] = 0.0
    wm = np.clip(1 - csf - gm, 0, 1)
    brain = (r < 1.0) | cerebellum | stem
    return brain, np.stack([wm, gm, csf]), r


def draw_tumour(rng: np.random.Generator, brain_semi_frac: float = 0.55) -> Tumour:
    """Tumour size, shape and position of one patient at its first visit."""
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    centre = direction * rng.uniform(0.15, brain_semi_frac) * np.array([68.0, 86.0, 70.0])
    offset = rng.standard_normal(3)
    return Tumour(
        centre_mm=centre.astype(np.float64),
        radius_mm=float(rng.uniform(12.0, 30.0)),
        oedema_scale=float(rng.uniform(1.15, 1.45)),
        rim_mm=float(rng.uniform(2.0, 6.0)),
        has_et=bool(rng.random() < 0.85),
        has_rc=bool(rng.random() < 0.5),
        cavity_offset=(offset / np.linalg.norm(offset)).astype(np.float64),
    )


def evolve(t: Tumour, rng: np.random.Generator, visit_index: int) -> Tumour:
    """The same tumour at a later visit: resized, and more often resected."""
    if visit_index == 0:
        return t
    return Tumour(
        centre_mm=t.centre_mm,
        radius_mm=float(np.clip(t.radius_mm * rng.uniform(0.7, 1.3), 6.0, 30.0)),
        oedema_scale=float(np.clip(t.oedema_scale * rng.uniform(0.85, 1.15), 1.15, 1.45)),
        rim_mm=t.rim_mm,
        has_et=bool(rng.random() < 0.8),
        has_rc=t.has_rc or bool(rng.random() < 0.5),
        cavity_offset=t.cavity_offset,
    )


def tumour_labels(t: Tumour, rng: np.random.Generator, grid: tuple[int, int, int], spacing: float,
                  xyz: list[np.ndarray], brain: np.ndarray, tissue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BraTS 2024 label map (uint8, 0..4) of one tumour, kept inside the brain, and the oedema's
    signal strength (1 near the core, fading to 0.65 at its outer edge: real oedema's FLAIR lower
    quartile lies as far below its median as its upper quartile lies above).
    Oedema spreads further through white matter than through grey matter and stays out of CSF."""
    d = np.sqrt(sum((x - c) ** 2 for x, c in zip(xyz, t.centre_mm)))
    lumpy = 1 + 0.22 * smooth_noise(rng, grid, spacing, 18.0)
    core = d * lumpy / t.radius_mm                 # < 1 inside the core
    # oedema spreads irregularly, further along some directions than others, with a ragged edge
    spread = np.clip(1 + 0.25 * smooth_noise(rng, grid, spacing, 25.0)
                     + 0.15 * smooth_noise(rng, grid, spacing, 8.0), 0.5, 1.5)
    white = ndimage.gaussian_filter(tissue[0], 3.0 / spacing)
    oedema = d / (min(t.radius_mm * t.oedema_scale, 48.0) * spread * (0.85 + 0.35 * white))
    labels = np.zeros(grid, np.uint8)
    labels[(oedema < 1) & (tissue[2] < 0.5)] = 2
    if t.has_et:
        # the rim never fills the core: at most half its radius, so there is always a NETC centre
        rim = np.minimum(t.rim_mm * (1 + 0.4 * smooth_noise(rng, grid, spacing, 8.0)), 0.5 * t.radius_mm)
        labels[core < 1] = 3
        labels[(core < 1) & (d * lumpy < t.radius_mm - rim)] = 1
    else:
        labels[core < 1] = 1
    if t.has_rc:
        c = t.centre_mm + t.cavity_offset * t.radius_mm * 0.7
        dc = np.sqrt(sum((x - ci) ** 2 for x, ci in zip(xyz, c)))
        labels[dc * (1 + 0.12 * smooth_noise(rng, grid, spacing, 12.0)) < t.radius_mm * 0.55] = 4
    labels[~brain] = 0
    pieces, _ = ndimage.label(labels > 0)     # oedema cut off from the tumour by CSF is not kept
    kept = np.unique(pieces[np.isin(labels, (1, 3, 4))])
    labels[(labels == 2) & ~np.isin(pieces, kept[kept > 0])] = 0
    strength = 0.65 + 0.35 * np.clip((1 - oedema) / 0.5, 0, 1)
    return labels, strength


def wm_lesions(rng: np.random.Generator, xyz: list[np.ndarray], tumour_mask: np.ndarray,
               brain_r: np.ndarray) -> np.ndarray:
    """Fraction map of a few small FLAIR-bright white-matter lesions away from the tumour."""
    out = np.zeros(brain_r.shape, np.float64)
    for _ in range(int(rng.integers(2, 7))):
        c = rng.uniform(-1, 1, 3) * np.array([40.0, 55.0, 40.0])
        radius = rng.uniform(2.5, 7.0)
        d = np.sqrt(sum((x - ci) ** 2 for x, ci in zip(xyz, c)))
        out = np.maximum(out, soft(d - radius, 1.0))
    out[tumour_mask | (brain_r > 0.78)] = 0
    return out


def vessels(rng: np.random.Generator, grid: tuple[int, int, int], spacing: float,
            brain_r: np.ndarray) -> np.ndarray:
    """Fraction map of thin winding vessels: where two smooth random fields both cross zero."""
    a = smooth_noise(rng, grid, spacing, 30.0)
    b = smooth_noise(rng, grid, spacing, 30.0)
    tube = soft(np.abs(a) - 0.08, 0.02) * soft(np.abs(b) - 0.08, 0.02)
    return tube * (brain_r < 0.97)


def case_signal(rng: np.random.Generator) -> np.ndarray:
    """(T, 4) signal of every tissue in every modality for one case, drawn around TISSUE_SIGNAL."""
    base = np.asarray([TISSUE_SIGNAL[t] for t in TISSUES], np.float64)
    spread = np.asarray([SIGNAL_SPREAD[t] for t in TISSUES])[:, None]
    return base * np.exp(spread * rng.standard_normal(base.shape))


def wild_contrast(rng: np.random.Generator) -> np.ndarray:
    """(T,) signal of every tissue in one image, each drawn uniformly from 0.05-1.2: any order of the
    tissues, so that only shape and context tell them apart (SynthSeg's contrast draw)."""
    return rng.uniform(0.05, 1.2, len(TISSUES))


def acquire(volume: np.ndarray, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """`volume` as a scanner with coarser voxels would have acquired it, resampled back to its grid:
    half the time a 3D acquisition (isotropic voxels of 1-4 mm), half the time 2D thick slices (3-8
    mm, along a random axis, 1-1.5 mm in plane). Each axis whose voxel is larger than `spacing` is
    blurred by the voxel's profile (Gaussian, σ 0.35 voxel widths), sampled at the coarse voxels and
    interpolated back linearly."""
    if rng.random() < 0.5:
        voxel = np.full(3, rng.uniform(1.0, 4.0))
    else:
        voxel = np.full(3, rng.uniform(1.0, 1.5))
        voxel[int(rng.integers(3))] = rng.uniform(3.0, 8.0)
    factor = np.maximum(voxel / spacing, 1.0)
    if np.all(factor == 1.0):
        return volume
    blurred = ndimage.gaussian_filter(volume, 0.35 * np.where(factor > 1.0, factor, 0.0))
    coarse_shape = np.maximum(np.rint(np.array(volume.shape) / factor), 2)
    coarse = ndimage.zoom(blurred, coarse_shape / np.array(volume.shape), order=1, grid_mode=True, mode="nearest")
    back = ndimage.zoom(coarse, np.array(volume.shape) / np.array(coarse.shape), order=1, grid_mode=True,
                        mode="nearest")
    return back[tuple(slice(0, n) for n in volume.shape)]


def render(rng: np.random.Generator, fractions: np.ndarray, brain: np.ndarray, grid: tuple[int, int, int],
           spacing: float, xyz: list[np.ndarray], randomise: RandomiseParams | None = None,
           wild: np.random.Generator | None = None) -> np.ndarray:
    """(4, X, Y, Z) float32 images: each case's own tissue signal, uneven inside the tumour, then what
    differs from scanner to scanner, drawn per modality: texture (weaker inside the tumour), bias
    field (strength, a top-to-bottom gradient and, on FLAIR, a change toward the skull base), noise
    level, thick slices (blur along one axis, as often as BraTS' protocols acquire that modality in 2D:
    THICK_SLICES) and gain.

    `randomise` adds SynthSeg-style draws from their own generator `wild`, so that the draws above
    stay the same with it on or off: per image, with probability `contrast`, every tissue's signal
    drawn uniformly from 0.05-1.2 (any order, contrasts no scanner has); with probability
    `resolution`, a coarser acquisition (`acquire`); a further bias field, noise and a power-law
    intensity non-linearity, each up to its param. A param of 0 draws nothing."""
    r = randomise or NO_RANDOMISATION
    signal = case_signal(rng)
    images = np.zeros((len(MODALITIES), *grid), np.float32)
    for m in range(len(MODALITIES)):
        if r.contrast and wild.random() < r.contrast:
            signal[:, m] = wild_contrast(wild)
        clean = np.tensordot(signal[:, m], fractions, axes=1)
        # tumour tissue is uneven, in each modality its own way: real oedema's FLAIR quartiles lie
        # about twice as far apart as a uniform tissue's would (bench/results/sim2real.json)
        tumour = np.tensordot(signal[TUMOUR_TISSUES, m], fractions[TUMOUR_TISSUES], axes=1)
        clean += tumour * rng.uniform(0.2, 0.4) * smooth_noise(rng, grid, spacing, 14.0)
        # tissue texture, fine and strongest in healthy tissue: oedema is smoother than the brain
        # around it in real scans (high-pass std, bench/sim2real.py), not rougher
        smoother = 1 - 0.7 * np.clip(fractions[TUMOUR_TISSUES].sum(axis=0), 0, 1)
        clean *= 1 + rng.uniform(0.04, 0.12) * smoother * smooth_noise(rng, grid, spacing, 4.0)
        # bias field: smooth, plus a gradient from the top of the head to the bottom (coil sensitivity)
        gradient = rng.uniform(-0.25, 0.25) * np.clip(-xyz[2] / 70.0, -1.0, 1.0)
        if MODALITIES[m] == "t2f":
            # FLAIR's own change toward the skull base (inflow, B1), either way: over the 20 real cases
            # healthy tissue there is not brighter than mid-brain on the whole (bench/sim2real.py's profile)
            gradient = gradient + rng.uniform(-0.3, 0.2) * np.clip((-xyz[2] - 20.0) / 40.0, 0.0, 1.0)
        clean *= np.exp(rng.uniform(0.05, 0.2) * smooth_noise(rng, grid, spacing, 90.0) + gradient)
        if r.bias:
            clean *= np.exp(wild.uniform(0.0, r.bias) * smooth_noise(wild, grid, spacing, 60.0))
        if rng.random() < THICK_SLICES[MODALITIES[m]]:
            clean = ndimage.gaussian_filter1d(clean, rng.uniform(1.0, 2.5) / spacing, axis=int(rng.integers(3)))
        if r.resolution and wild.random() < r.resolution:
            clean = acquire(clean, spacing, wild)
        sigma = rng.uniform(0.02, 0.05)
        noisy = np.hypot(clean + sigma * rng.standard_normal(grid),
                         sigma * rng.standard_normal(grid))
        if r.noise:
            extra = wild.uniform(0.0, r.noise)
            noisy = np.hypot(noisy + extra * wild.standard_normal(grid), extra * wild.standard_normal(grid))
        if r.gamma:
            top = noisy[brain].max()
            noisy = top * (noisy / top) ** np.exp(wild.normal(0.0, r.gamma))
        gain = rng.uniform(300.0, 1500.0)
        # Integer-valued intensities, as scanners write; also keeps files identical across CPUs.
        images[m] = np.where(brain, np.maximum(np.rint(noisy * gain), 1.0), 0.0)
    return images


def make_case(seed: int, patient: int, visit_index: int, grid: tuple[int, int, int],
              spacing: float, randomise: RandomiseParams | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (4, X, Y, Z) float32, labels (X, Y, Z) uint8 and affine of one synthetic case;
    `randomise` (render's) changes the images only: the anatomy and labels stay the same."""
    patient_rng = np.random.default_rng([seed, patient])
    xyz = coordinates(grid, spacing)
    brain, tissue, brain_r = anatomy(patient_rng, grid, spacing, xyz)
    tumour = draw_tumour(patient_rng)
    visit_rng = np.random.default_rng([seed, patient, visit_index + 1])
    for i in range(1, visit_index + 1):  # each visit evolves the previous one
        tumour = evolve(tumour, np.random.default_rng([seed, patient, i, 7]), i)
    labels, oedema_strength = tumour_labels(tumour, visit_rng, grid, spacing, xyz, brain, tissue)
    lesions = wm_lesions(visit_rng, xyz, labels > 0, brain_r)
    fractions = np.zeros((len(TISSUES), *grid), np.float64)
    fractions[:3] = tissue * (1 - lesions)
    fractions[TISSUE_INDEX["wmh"]] = lesions
    tubes = vessels(visit_rng, grid, spacing, brain_r) * (labels == 0)
    fractions[:3] *= 1 - tubes
    fractions[TISSUE_INDEX["vessel"]] = tubes
    heterogeneity = 1 + 0.08 * smooth_noise(visit_rng, grid, spacing, 5.0)
    for label, name in ((2, "snfh"), (3, "et"), (1, "netc"), (4, "rc")):
        inside = ndimage.gaussian_filter((labels == label).astype(np.float64), 0.6 / spacing)
        inside *= heterogeneity if name != "rc" else 1.0
        if name == "snfh":
            inside *= oedema_strength
        fractions[:3] *= 1 - np.clip(inside, 0, 1)
        fractions[TISSUE_INDEX[name]] = inside
    wild = np.random.default_rng([seed, patient, visit_index + 1, 11])
    return render(visit_rng, fractions, brain, grid, spacing, xyz, randomise, wild), labels, mni_affine(spacing)


def plan(params: SynthesizeParams, seed: int) -> list[tuple[int, int]]:
    """(patient, visit index) of every case; how many visits each patient has is seeded too."""
    rng = np.random.default_rng([seed, 2024])
    visits = rng.integers(1, params.visits + 1, size=params.patients)
    return [(p, v) for p in range(params.patients) for v in range(int(visits[p]))]


def write_case(out_dir: Path, seed: int, patient: int, visit_index: int, params: SynthesizeParams) -> str:
    """Make one case and move its folder into place only once every file is written."""
    name = case_id(patient, 100 + visit_index)
    images, labels, affine = make_case(seed, patient, visit_index, params.grid, params.spacing_mm, params.randomise)
    with atomic_folder(out_dir / name) as tmp:
        for m, mod in enumerate(MODALITIES):
            write_nifti(tmp / f"{name}-{mod}.nii.gz", images[m], affine)
        write_nifti(tmp / f"{name}-{SEG}.nii.gz", labels, affine)
    return name


def _work(job: tuple[Path, int, int, int, SynthesizeParams]) -> str:
    return write_case(*job)


def synthesize(params: SynthesizeParams, seed: int, out_dir: Path) -> list[str]:
    """Every case of the plan, on `params.workers` processes: each case comes from its own seed, so the
    files are the same bytes whatever the number of workers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(out_dir, seed, p, v, params) for p, v in plan(params, seed)]
    workers = min(params.workers, len(jobs))
    names = run_each(_work, jobs, workers, lambda job: case_id(job[2], 100 + job[3]), "synthesize")
    return sorted(tqdm(names, total=len(jobs), desc="synthesize", unit="case"))


def main() -> None:
    params = load_params()
    names = synthesize(params.synthesize, params.base.seed, params.paths.synthetic_dir)
    print(f"wrote {len(names)} cases to {params.paths.synthetic_dir}")


if __name__ == "__main__":
    run_stage(main)
