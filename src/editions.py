"""The public BraTS editions, read where they lie: how each names its cases, files and labels, and
how they map to the BraTS 2024 meaning (src/brats.py) that everything after reading uses.

| edition | a case                                                     | t1n, t1c, t2w, t2f       | labels -> 2024      |
|---------|------------------------------------------------------------|--------------------------|---------------------|
| 2024    | BraTS-GLI-PPPPP-VVV/BraTS-GLI-PPPPP-VVV-{t1n,…,seg}.nii.gz | same names               | 0..4 as they are    |
|         | (visits 100 and up)                                        |                          |                     |
| 2023    | the same layout, visits 000-099 (BraTS 2023 GLI)           | same names               | 1, 2, 3; no 4 (RC)  |
| 2021    | <case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz: BraTS 2017-2021 | t1, t1ce, t2, flair    | 1 -> 1, 2 -> 2, 4 -> 3 |
|         | (BraTS2021_00000, BraTS20_Training_001, Brats18_CBICA_AAB_1) |                        |                     |
| msd     | imagesTr/BRATS_001.nii.gz, one 4D file (FLAIR, T1w, T1gd,  | channels 1, 2, 3, 0      | 1 -> 2, 2 -> 1, 3 -> 3 |
|         | T2w) and labelsTr/BRATS_001.nii.gz (Decathlon Task01)      |                          |                     |

2017-2021 share their file names and labels, so one entry (`2021`) reads them all. Case ids are kept
as the source names them. Patients: 2023/2024 ids carry the patient (`BraTS-GLI-00012-101` is a visit
of `BraTS-GLI-00012`); the other editions have one case per patient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brats import CASE_PATTERN, LABELS, MODALITIES, PAINT, SEG, patient_of
from errors import UserError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Edition:
    key: str                          # what params, the manifest and --labels call it
    title: str
    labels: dict[int, int]            # label value in this edition's files -> BraTS 2024 value
    suffixes: tuple[str, ...] = ()    # file suffix of each modality, in brats.MODALITIES order
    channels: tuple[int, ...] = ()    # or: channel of each modality in one 4D file (msd)

    def to_2024(self, labels: np.ndarray) -> np.ndarray:
        """uint8 labels of this edition -> the 2024 meaning (values must be keys of `labels`)."""
        table = np.zeros(256, np.uint8)
        for value, meaning in self.labels.items():
            table[value] = meaning
        return table[labels]

    @property
    def paint(self) -> tuple[tuple[str, int], ...]:
        """The order regions are painted in for this edition's labels: brats.PAINT, without the
        regions of 2024 labels it has no value for (RC before 2024)."""
        return tuple((region, value) for region, value in PAINT if value in self.labels.values())

    def from_2024(self, labels: np.ndarray) -> np.ndarray:
        """uint8 labels of the 2024 meaning -> this edition's values; a 2024 label it has no value
        for (RC before 2024) becomes background."""
        table = np.zeros(256, np.uint8)
        for value, meaning in self.labels.items():
            table[meaning] = value
        return table[labels]


EDITIONS: dict[str, Edition] = {e.key: e for e in (
    Edition("2024", "BraTS 2024 GLI", {v: v for v in LABELS}, suffixes=MODALITIES),
    Edition("2023", "BraTS 2023 GLI", {0: 0, 1: 1, 2: 2, 3: 3}, suffixes=MODALITIES),
    Edition("2021", "BraTS 2017-2021", {0: 0, 1: 1, 2: 2, 4: 3}, suffixes=("t1", "t1ce", "t2", "flair")),
    Edition("msd", "Medical Segmentation Decathlon Task01_BrainTumour", {0: 0, 1: 2, 2: 1, 3: 3},
            channels=(1, 2, 3, 0)),
)}
AUTO = "auto"
CHOICES = (AUTO, *EDITIONS)                 # what preprocess.edition accepts
FIRST_2024_VISIT = 100                      # 2024 visits are 100-109; 2023 cases end in -000 or -001
MSD_CASE = re.compile(r"^(?P<case>[A-Za-z]+_\d+)\.nii(\.gz)?$", re.I)   # BRATS_001.nii.gz
# The case ids of 2017-2021 (BraTS2021_00000, BraTS20_Training_001, Brats18_CBICA_AAB_1, BraTS19_2013_10_1).
# A folder so named is a case even when its files cannot be found: it is read or it fails, never dropped.
LEGACY_CASE = re.compile(r"^(BraTS2021_\d{5}|BraTS20_(Training|Validation)_\d{3}|BraTS1[789]_[A-Z0-9]+_[A-Z0-9]+_\d+)$",
                         re.I)


@dataclass(frozen=True)
class Case:
    """Where one case's files are. `images` holds one file per modality (brats.MODALITIES order), or
    one 4D file (msd); `seg` is where its labels would be (it may not exist)."""
    name: str
    patient: str
    edition: Edition
    images: tuple[Path, ...]
    seg: Path

    @property
    def location(self) -> Path:
        """The folder (or, for msd, the image file) that holds the case."""
        return self.images[0] if self.edition.channels else self.images[0].parent


@dataclass(frozen=True)
class Listing:
    """Every entry of an input folder: its cases, and why each other entry is not one."""
    cases: list[Case]
    misnamed: dict[str, str]   # folders that look like cases but are not named as one (why, what to do)
    ignored: dict[str, str]    # anything else (files, other folders)


def _file(folder: Path, stem: str) -> Path:
    """`<stem>.nii.gz`, or `<stem>.nii` where only that exists; a name differing only in upper and
    lower case (`_FLAIR.nii.gz`, `.NII.GZ`: exports from other systems) is the same file."""
    gz = folder / f"{stem}.nii.gz"
    plain = folder / f"{stem}.nii"
    if gz.exists() or plain.exists():
        return plain if not gz.exists() else gz
    if folder.is_dir():
        wanted = {gz.name.lower(), plain.name.lower()}
        for entry in sorted(folder.iterdir()):
            if entry.name.lower() in wanted:
                return entry
    return gz


def _brats_case(folder: Path, edition: Edition) -> Case:
    """A folder in the 2023/2024 layout: `<case>/<case>-<suffix>.nii.gz`."""
    name = folder.name
    images = tuple(_file(folder, f"{name}-{s}") for s in edition.suffixes)
    return Case(name, patient_of(name), edition, images, _file(folder, f"{name}-{SEG}"))


def _legacy_case(folder: Path) -> Case:
    """A folder in the 2017-2021 layout: `<case>/<case>_<suffix>.nii.gz`."""
    edition, name = EDITIONS["2021"], folder.name
    images = tuple(_file(folder, f"{name}_{s}") for s in edition.suffixes)
    return Case(name, name, edition, images, _file(folder, f"{name}_{SEG}"))


def _msd_case(image: Path) -> Case:
    """One 4D image of a Decathlon images folder; its labels lie in the `labels…` sibling folder."""
    name = MSD_CASE.match(image.name)["case"]
    labels = image.parent.parent / ("labels" + image.parent.name.removeprefix("images"))
    return Case(name, name, EDITIONS["msd"], (image,), labels / image.name)


def _is_legacy_case(folder: Path) -> bool:
    """Named with a 2017-2021 id (whatever it holds, even when it is a dangling link), or a folder
    holding `<folder>_<suffix>` files of that layout."""
    if LEGACY_CASE.match(folder.name):
        return True
    return folder.is_dir() and any(_file(folder, f"{folder.name}_{s}").exists()
                                   for s in (*EDITIONS["2021"].suffixes, SEG))


def year_edition(name: str, forced: str = AUTO) -> Edition:
    """2023 or 2024 for a case id of their shared layout: the visit number tells, unless forced
    (an id not of that layout counts as 2024)."""
    if forced in ("2023", "2024"):
        return EDITIONS[forced]
    match = CASE_PATTERN.match(name)
    return EDITIONS["2023" if match and int(match["visit"]) < FIRST_2024_VISIT else "2024"]


def case_at(path: Path, edition: str = AUTO) -> Case | None:
    """The case that `path` itself is (a case folder of any edition, or a Decathlon 4D image), or None.
    An entry named with a case id is a case even when it is not a readable folder (a dangling link,
    an empty folder): reading it fails with the reason instead of the case going missing."""
    if CASE_PATTERN.match(path.name):
        return _brats_case(path, year_edition(path.name, edition))
    if _is_legacy_case(path):
        return _legacy_case(path)
    if path.is_file() and MSD_CASE.match(path.name) and not path.name.startswith("._"):
        return _msd_case(path)
    return None


def find_cases(folder: Path, hint: str, edition: str = AUTO) -> Listing:
    """The cases of `folder`: itself when it is one case, the `imagesTr` cases of a Decathlon task
    folder, or the case folders (or Decathlon images) directly under it; sorted by name, with the
    other entries and why they are left out. One edition per folder; `edition` (auto: recognised per
    case) must fit the layout found. `hint` says how the user points at another folder."""
    if not folder.exists():
        raise UserError(f"{folder} does not exist; {hint}")
    single = case_at(folder, edition)
    if single is not None:
        return _checked(Listing([single], {}, {}), folder, edition)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder nor a case; {hint}")
    if (folder / "imagesTr").is_dir():                     # a Decathlon task folder
        listing = _scan(folder / "imagesTr", edition)
        others = [e for e in sorted(folder.iterdir()) if e.name not in ("imagesTr", "labelsTr")]
        for entry in others:
            beside = case_at(entry)
            if beside is not None:
                raise UserError(f"{folder} mixes editions: imagesTr/ holds {EDITIONS['msd'].title} cases but "
                                f"{entry.name} beside it is {beside.edition.title} ({beside.edition.key}); "
                                "keep one edition per folder")
        other = {e.name: "not read: the training cases are imagesTr/ with labelsTr/" for e in others}
        listing = Listing(listing.cases, listing.misnamed, {**other, **listing.ignored})
    else:
        listing = _scan(folder, edition)
    if not listing.cases and not listing.misnamed:
        raise UserError(f"no BraTS cases in {folder} (case folders such as BraTS-GLI-00000-100/ or "
                        f"BraTS2021_00000/, or a Decathlon folder with imagesTr/); {hint}")
    return _checked(listing, folder, edition)


def _scan(folder: Path, edition: str) -> Listing:
    cases, misnamed, ignored = [], {}, {}
    for entry in sorted(folder.iterdir()):
        case = case_at(entry, edition)
        if case is not None:
            cases.append(case)
        elif entry.is_dir() and entry.name.startswith("BraTS-"):
            misnamed[entry.name] = (f"{entry.name}: named like a case but not BraTS-GLI-PPPPP-VVV (5-digit "
                                    "patient, 3-digit visit); rename the folder and its files")
        elif entry.is_dir() and _holds_nifti(entry):
            misnamed[entry.name] = (f"{entry.name}: holds NIfTI files but is not a case of any edition: a case "
                                    "folder and its files share the case id (BraTS-GLI-00000-100/BraTS-GLI-"
                                    "00000-100-t1n.nii.gz, BraTS2021_00000/BraTS2021_00000_t1.nii.gz); "
                                    "rename the folder or its files")
        elif entry.name.startswith("._"):
            ignored[entry.name] = "a macOS metadata file, not a scan"
        else:
            ignored[entry.name] = "not a case folder" if entry.is_dir() else "a file, not a case folder"
    return Listing(cases, misnamed, ignored)


def _holds_nifti(folder: Path) -> bool:
    try:
        return any(e.name.lower().endswith(NIFTI_SUFFIXES) for e in folder.iterdir())
    except OSError:
        return False


def _checked(listing: Listing, folder: Path, edition: str) -> Listing:
    """One edition per folder, and the one params ask for (when not auto)."""
    by_edition: dict[str, Case] = {}
    for case in listing.cases:
        by_edition.setdefault(case.edition.key, case)
    if len(by_edition) > 1:
        (a, first), (b, second) = list(by_edition.items())[:2]
        raise UserError(f"{folder} mixes editions: {first.location.name} is {EDITIONS[a].title} ({a}) but "
                        f"{second.location.name} is {EDITIONS[b].title} ({b}); keep one edition per folder")
    if edition != AUTO and by_edition and edition not in by_edition:
        found = next(iter(by_edition))
        raise UserError(f"{folder} holds {EDITIONS[found].title} cases ({found}, e.g. "
                        f"{by_edition[found].location.name}), but preprocess.edition is {edition}; "
                        f"set it to {found} or auto")
    return listing


def edition_of(listing: Listing) -> str | None:
    """The edition key of a listing's cases (one per folder, see `find_cases`)."""
    return listing.cases[0].edition.key if listing.cases else None
