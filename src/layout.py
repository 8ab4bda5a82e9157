"""The preprocessed dataset on disk, as the preprocess stage writes it and every later stage reads it.

    <preprocessed_dir>/cases/<case>/image.b2nd  (4, X, Y, Z) float16, channels in brats.MODALITIES order
    <preprocessed_dir>/cases/<case>/label.b2nd  (X, Y, Z) uint8 labels 0..4
    <preprocessed_dir>/cases/<case>/native_label.b2nd  the labels on the case's own grid (cropped), only
                                                where preprocess resampled the case (`preprocess.spacing_mm`)
    <preprocessed_dir>/manifest.json            edition, spacing; per case: patient, crop box, shapes,
                                                affine, spacing (stored and native)
    <preprocessed_dir>/splits.json              {"train", "val", "test"}: case names, grouped by patient;
                                                "folds": per cross-validation fold (`train.folds`)
                                                its {"train", "val"} (fold 0 of one fold: train, val)
    <preprocessed_dir>/report.json              counts and skipped cases

The arrays are Blosc2 NDArrays (the format nnU-Net v2 keeps its preprocessed data in), LZ4 with byte
shuffle in chunks of 64³ and blocks of 32³ voxels: a training patch decompresses only the blocks it
touches. The image is float16, as `prepare.prepare` rounds it for training and prediction alike. On
the 1 mm synthetic set a case takes 0.9-1.05× its raw .nii.gz (Zstd: 0.7-0.8×, but patch reads take
1.4-2× as long; bench/scale.py compares the choices, BENCHMARKS.md holds the figures).

Blosc2 does not checksum its chunks: a flipped byte decodes to wrong numbers without an error. So
each file carries the CRC-32 of its voxels, checked by every whole-array read (`Stored.read`:
validation, evaluate); a truncated or structurally broken file is named when opened or sliced.
Training patches are not checked (that would decompress the whole case for each patch); DVC's own
hashes (`dvc status`, `dvc data status`) catch damage to files it tracks.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import blosc2
import numpy as np

from errors import UserError
from files import read_json, with_path

CASES_DIR = "cases"
IMAGE_FILE = "image.b2nd"
LABEL_FILE = "label.b2nd"
NATIVE_LABEL_FILE = "native_label.b2nd"
MANIFEST_FILE = "manifest.json"
SPLITS_FILE = "splits.json"
REPORT_FILE = "report.json"
CHUNK = 64          # voxels per chunk side
BLOCK = 32          # voxels per block side (the unit one thread decompresses)
# One compression thread: Blosc2's multi-threaded writer does not give the same bytes twice, and
# DVC needs byte-identical outputs. Readers use one thread too (they run in loader workers).
_CPARAMS = {"codec": blosc2.Codec.LZ4, "clevel": 5, "filters": [blosc2.Filter.SHUFFLE], "nthreads": 1}
_DPARAMS = {"nthreads": 1}


def case_folder(pre_dir: Path, case: str) -> Path:
    return pre_dir / CASES_DIR / case


def read_manifest(pre_dir: Path) -> dict:
    """The whole manifest: `edition`, `labels`, `modalities`, `spacing_mm` (the training spacing
    preprocess resampled to, or "keep") and `cases`."""
    return read_json(pre_dir / MANIFEST_FILE, "the case manifest", stage="preprocess")


def load_manifest(pre_dir: Path) -> dict[str, dict]:
    """Manifest entries by case name."""
    return read_manifest(pre_dir)["cases"]


def load_split(pre_dir: Path, split: str) -> list[str]:
    """Case names of one split ("train", "val" or "test")."""
    path = pre_dir / SPLITS_FILE
    cases = read_json(path, "the train/val/test split", stage="preprocess")[split]
    if not cases:
        raise UserError(f"the {split} split in {path} is empty; add cases or change "
                        "preprocess.val_fraction / test_fraction")
    return cases


def load_fold(pre_dir: Path, fold: int) -> tuple[list[str], list[str]]:
    """Training and held-out case names of cross-validation fold `fold` (train.folds)."""
    path = pre_dir / SPLITS_FILE
    folds = read_json(path, "the train/val/test split", stage="preprocess").get("folds") or []
    if not 0 <= fold < len(folds):
        raise UserError(f"{path} holds {len(folds)} cross-validation fold(s), not fold {fold}: train.folds "
                        "changed since preprocess ran; run `dvc repro` (it reruns preprocess first)")
    train, val = folds[fold]["train"], folds[fold]["val"]
    if not train or not val:
        raise UserError(f"fold {fold} in {path} has no {'training' if not train else 'held-out'} case; add "
                        "cases or change preprocess.val_fraction / train.folds")
    return train, val


def _checksum(array: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1))


def save_array(path: Path, array: np.ndarray) -> None:
    """Write one array (image or labels) as a chunked, compressed Blosc2 file with its checksum.
    Compressed in memory and written by Python, so a full disk is an OSError naming the file."""
    array = np.ascontiguousarray(array)
    spatial = array.ndim - 3
    chunks = array.shape[:spatial] + tuple(min(CHUNK, n) for n in array.shape[spatial:])
    blocks = (1,) * spatial + tuple(min(BLOCK, n) for n in array.shape[spatial:])
    stored = blosc2.asarray(array, chunks=chunks, blocks=blocks, cparams=_CPARAMS)
    stored.vlmeta["crc32"] = _checksum(array)
    try:
        path.write_bytes(stored.to_cframe())
    except OSError as e:
        raise with_path(e, path) from None


def _damaged(path: Path, reason: str) -> UserError:
    return UserError(f"preprocessed file {path} is missing or damaged ({reason}); "
                     "rerun `dvc repro -f preprocess` (or `dvc checkout` / `dvc pull` if it came from DVC)")


class Stored:
    """A preprocessed array on disk: `shape`, `dtype`, `stored[slices]` and `read()` (the whole array,
    checked). Any read failure names the file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._array = blosc2.open(str(path), mode="r", dparams=_DPARAMS)
            self._crc = int(self._array.vlmeta["crc32"])
        except FileNotFoundError:
            raise _damaged(path, "not found") from None
        except Exception as e:  # blosc2 raises RuntimeError/ValueError/KeyError for broken files
            raise _damaged(path, f"{type(e).__name__}: {e}") from None
        self.shape: tuple[int, ...] = tuple(self._array.shape)
        self.dtype = np.dtype(self._array.dtype)
        self.ndim = len(self.shape)

    def read(self) -> np.ndarray:
        """The whole array, checked against its checksum."""
        try:
            array = self._array[...]
        except Exception as e:
            raise _damaged(self.path, f"{type(e).__name__}: {e}") from None
        if _checksum(array) != self._crc:
            raise _damaged(self.path, "its voxels do not match the checksum written with them")
        return array

    def __getitem__(self, index) -> np.ndarray:
        """Only the blocks the index touches are decompressed; not checked against the checksum."""
        try:
            return self._array[index]
        except Exception as e:
            raise _damaged(self.path, f"{type(e).__name__}: {e}") from None


def write_case(folder: Path, image: np.ndarray, label: np.ndarray, native_label: np.ndarray | None = None) -> None:
    """Store one case: the image as prepare.prepare made it (float16), labels as uint8, and the labels
    on the case's own grid where the case was resampled."""
    folder.mkdir(parents=True, exist_ok=True)
    save_array(folder / IMAGE_FILE, image)
    save_array(folder / LABEL_FILE, label.astype(np.uint8))
    if native_label is not None:
        save_array(folder / NATIVE_LABEL_FILE, native_label.astype(np.uint8))


def open_case(pre_dir: Path, case: str) -> tuple[Stored, Stored]:
    """The (4, X, Y, Z) float16 image and (X, Y, Z) uint8 labels of one case, read lazily."""
    folder = case_folder(pre_dir, case)
    return Stored(folder / IMAGE_FILE), Stored(folder / LABEL_FILE)


def native_shape(entry: dict) -> tuple[int, int, int]:
    """The shape of a case on its own grid (its crop box), from its manifest entry."""
    return tuple(hi - lo for lo, hi in entry["crop_box"])


def native_labels(pre_dir: Path, case: str, entry: dict) -> np.ndarray:
    """The labels of one case on its own grid (what predictions are scored against), checked."""
    folder = case_folder(pre_dir, case)
    resampled = tuple(entry["shape"]) != native_shape(entry)
    return Stored(folder / (NATIVE_LABEL_FILE if resampled else LABEL_FILE)).read()
