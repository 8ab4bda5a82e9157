"""Every public BraTS edition is read where it lies: layouts, modality order and labels mapped voxel for
voxel to the 2024 meaning; each edition's typical mistakes are one line naming the file."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest

import evaluate
import predict
from editions import EDITIONS, case_at, find_cases
from errors import UserError
from nifti import CaseError, read_case, write_nifti
from preprocess import RAW_DIR_HINT, preprocess

SHAPE = (12, 10, 8)
# The mapping of ../shared/BRATS2024.md, written out here (not read from src/editions.py).
TO_2024 = {"2024": {0: 0, 1: 1, 2: 2, 3: 3, 4: 4}, "2023": {0: 0, 1: 1, 2: 2, 3: 3},
           "2021": {0: 0, 1: 1, 2: 2, 4: 3}, "msd": {0: 0, 1: 2, 2: 1, 3: 3}}


def modality_images(seed: int) -> dict[str, np.ndarray]:
    """One distinct, non-zero volume per 2024 modality name."""
    rng = np.random.default_rng(seed)
    return {m: rng.uniform(10 * (i + 1), 10 * (i + 1) + 5, SHAPE).astype(np.float32)
            for i, m in enumerate(("t1n", "t1c", "t2w", "t2f"))}


def source_labels(edition: str, seed: int) -> np.ndarray:
    """A label map holding every label value of the edition, in its own values."""
    values = np.array(sorted(TO_2024[edition]), np.uint8)
    return values[np.random.default_rng(seed).integers(0, len(values), SHAPE)]


def write_2024_layout(folder, name, images, labels, affine=np.eye(4)):
    case = folder / name
    case.mkdir(parents=True)
    for m, image in images.items():
        write_nifti(case / f"{name}-{m}.nii.gz", image, affine)
    if labels is not None:
        write_nifti(case / f"{name}-seg.nii.gz", labels, affine)
    return case


def write_2021_layout(folder, name, images, labels, affine=np.eye(4)):
    case = folder / name
    case.mkdir(parents=True)
    for m, suffix in (("t1n", "t1"), ("t1c", "t1ce"), ("t2w", "t2"), ("t2f", "flair")):
        write_nifti(case / f"{name}_{suffix}.nii.gz", images[m], affine)
    if labels is not None:
        write_nifti(case / f"{name}_seg.nii.gz", labels, affine)
    return case


def write_msd_layout(task, name, images, labels, affine=np.eye(4), channels=("t2f", "t1n", "t1c", "t2w")):
    """Task01_BrainTumour: one 4D image, volumes FLAIR, T1w, T1gd, T2w, and its label file."""
    (task / "imagesTr").mkdir(parents=True, exist_ok=True)
    (task / "labelsTr").mkdir(exist_ok=True)
    write_nifti(task / "imagesTr" / f"{name}.nii.gz", np.stack([images[m] for m in channels], axis=-1), affine)
    if labels is not None:
        write_nifti(task / "labelsTr" / f"{name}.nii.gz", labels, affine)
    return task / "imagesTr" / f"{name}.nii.gz"


WRITERS = {"2024": (write_2024_layout, ["BraTS-GLI-00007-100", "BraTS-GLI-00007-101", "BraTS-GLI-00009-100"]),
           "2023": (write_2024_layout, ["BraTS-GLI-00007-000", "BraTS-GLI-00007-001", "BraTS-GLI-00009-000"]),
           "2021": (write_2021_layout, ["BraTS2021_00000", "Brats18_CBICA_AAB_1", "BraTS20_Training_001"]),
           "msd": (write_msd_layout, ["BRATS_001", "BRATS_002", "BRATS_003"])}


def dataset(tmp_path, edition: str):
    """A folder of three cases of `edition`; returns the folder and {case: (images, source labels)}."""
    writer, names = WRITERS[edition]
    folder = tmp_path / f"raw{edition}"
    written = {}
    for i, name in enumerate(names):
        images, labels = modality_images(i), source_labels(edition, i)
        writer(folder, name, images, labels)
        written[name] = (images, labels)
    return folder, written


@pytest.mark.parametrize("edition", list(WRITERS))
def test_each_layout_reads_modalities_in_order_and_labels_in_the_2024_meaning(tmp_path, edition):
    folder, written = dataset(tmp_path, edition)
    listing = find_cases(folder, "hint")
    assert [c.name for c in listing.cases] == sorted(written) and not listing.misnamed
    for case in listing.cases:
        assert case.edition.key == edition
        raw = read_case(case, with_seg=True)
        images, labels = written[case.name]
        for c, m in enumerate(("t1n", "t1c", "t2w", "t2f")):
            np.testing.assert_array_equal(raw.images[c], images[m])
        expected = np.vectorize(TO_2024[edition].get)(labels)        # voxel for voxel
        np.testing.assert_array_equal(raw.seg, expected)
        assert raw.seg.dtype == np.uint8 and raw.edition == edition


def test_patients_come_from_the_id_only_where_it_holds_one(tmp_path):
    for edition, patients in (("2024", ["BraTS-GLI-00007", "BraTS-GLI-00007", "BraTS-GLI-00009"]),
                              ("2021", sorted(WRITERS["2021"][1])), ("msd", WRITERS["msd"][1])):
        folder, _ = dataset(tmp_path, edition)
        assert [c.patient for c in find_cases(folder, "hint").cases] == patients


def test_labels_back_to_each_edition(tmp_path):
    all_2024 = np.arange(5, dtype=np.uint8)
    assert EDITIONS["2021"].from_2024(all_2024).tolist() == [0, 1, 2, 4, 0]    # RC has no 2021 label
    assert EDITIONS["msd"].from_2024(all_2024).tolist() == [0, 2, 1, 3, 0]
    assert EDITIONS["2023"].from_2024(all_2024).tolist() == [0, 1, 2, 3, 0]
    for edition, table in TO_2024.items():
        values = np.array(sorted(table), np.uint8)
        assert np.array_equal(EDITIONS[edition].from_2024(EDITIONS[edition].to_2024(values)), values)


def test_a_folder_mixing_editions_is_one_line(tmp_path):
    folder = tmp_path / "raw"
    write_2024_layout(folder, "BraTS-GLI-00001-100", modality_images(0), None)
    write_2021_layout(folder, "BraTS2021_00001", modality_images(1), None)
    with pytest.raises(UserError, match=r"mixes editions: BraTS-GLI-00001-100 is BraTS 2024 GLI \(2024\) but "
                                        r"BraTS2021_00001 is BraTS 2017-2021 \(2021\)"):
        find_cases(folder, "hint")


def test_an_edition_set_in_params_must_fit_the_folder(tmp_path):
    folder, _ = dataset(tmp_path, "2021")
    with pytest.raises(UserError, match=r"holds BraTS 2017-2021 cases \(2021, e.g. BraTS2021_00000\), but "
                                        r"preprocess.edition is msd"):
        find_cases(folder, "hint", "msd")
    # 2023 and 2024 share a layout: the setting decides
    folder, _ = dataset(tmp_path, "2024")
    assert {c.edition.key for c in find_cases(folder, "hint", "2023").cases} == {"2023"}


def test_2021_case_missing_t1ce_names_the_file(tmp_path):
    folder, _ = dataset(tmp_path, "2021")
    (folder / "BraTS2021_00000" / "BraTS2021_00000_t1ce.nii.gz").unlink()
    case = case_at(folder / "BraTS2021_00000")
    with pytest.raises(CaseError, match=r"BraTS2021_00000: missing file BraTS2021_00000_t1ce\.nii\.gz"):
        read_case(case, with_seg=False)


def test_2021_label_map_holding_3_names_the_file(tmp_path):
    folder, written = dataset(tmp_path, "2021")
    labels = written["BraTS2021_00000"][1].copy()
    labels[0, 0, 0] = 3
    write_nifti(folder / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz", labels, np.eye(4))
    with pytest.raises(CaseError, match=r"BraTS2021_00000: BraTS2021_00000_seg\.nii\.gz: label value 3 is not a "
                                        r"BraTS 2017-2021 label \(0, 1, 2, 4\)"):
        read_case(case_at(folder / "BraTS2021_00000"), with_seg=True)


def test_2023_label_map_holding_4_names_the_file(tmp_path):
    folder, written = dataset(tmp_path, "2023")
    labels = written["BraTS-GLI-00009-000"][1].copy()
    labels[1, 1, 1] = 4
    write_nifti(folder / "BraTS-GLI-00009-000" / "BraTS-GLI-00009-000-seg.nii.gz", labels, np.eye(4))
    with pytest.raises(CaseError, match=r"BraTS-GLI-00009-000-seg\.nii\.gz: label value 4 is not a BraTS 2023 GLI"):
        read_case(case_at(folder / "BraTS-GLI-00009-000"), with_seg=True)


def test_msd_image_with_three_channels_names_the_file(tmp_path):
    task = tmp_path / "Task01_BrainTumour"
    write_msd_layout(task, "BRATS_004", modality_images(0), None, channels=("t2f", "t1n", "t1c"))
    with pytest.raises(CaseError, match=r"BRATS_004: BRATS_004\.nii\.gz has shape \(12, 10, 8, 3\); a 4D file "
                                        r"of 4 volumes is expected"):
        read_case(case_at(task / "imagesTr" / "BRATS_004.nii.gz"), with_seg=False)


def test_msd_task_folder_skips_macos_files_and_reads_imagestr(tmp_path):
    folder, _ = dataset(tmp_path, "msd")
    (folder / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")   # as the tarball holds
    (folder / "dataset.json").write_text("{}")
    (folder / "imagesTs").mkdir()
    listing = find_cases(folder, "hint")
    assert [c.name for c in listing.cases] == WRITERS["msd"][1]
    assert "._BRATS_001.nii.gz" in listing.ignored and "dataset.json" in listing.ignored
    assert [c.name for c in find_cases(folder / "imagesTr", "hint").cases] == WRITERS["msd"][1]


@pytest.mark.parametrize("edition", ["2021", "msd"])
def test_preprocess_reads_an_edition_in_place(tmp_path, params_for, edition):
    folder, written = dataset(tmp_path, edition)
    params = params_for(paths__raw_dir=str(folder), preprocess__workers=1, preprocess__val_fraction=0.34,
                        preprocess__test_fraction=0.34)
    report = preprocess(params)
    assert report["processed"] == 3 and not report["skipped"]
    manifest = json.loads((params.paths.preprocessed_dir / "manifest.json").read_text())
    assert manifest["edition"] == edition and manifest["labels"] == "BraTS-GLI-2024"
    assert {c: e["patient"] for c, e in manifest["cases"].items()} == {c: c for c in written}
    for case, entry in manifest["cases"].items():
        expected = np.vectorize(TO_2024[edition].get)(written[case][1])
        assert entry["edition"] == edition
        assert entry["label_voxels"] == np.bincount(expected.ravel(), minlength=5).tolist()
    splits = json.loads((params.paths.preprocessed_dir / "splits.json").read_text())
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == sorted(written)
    assert not (tmp_path / f"raw{edition}" / "data").exists()             # nothing written beside the data


def test_preprocess_names_the_params_key_when_the_edition_does_not_fit(tmp_path, params_for):
    folder, _ = dataset(tmp_path, "msd")
    params = params_for(paths__raw_dir=str(folder), preprocess__edition="2021")
    with pytest.raises(UserError, match="preprocess.edition is 2021; set it to msd or auto"):
        preprocess(params)
    with pytest.raises(UserError, match=r"no BraTS cases in .*paths.raw_dir"):
        find_cases(tmp_path, RAW_DIR_HINT)


# Each edition's labels painted from the network's region masks, by hand: (region, value) from the
# outside in; an edition without RC never paints it, so tumour under an RC output stays tumour.
PAINTED = {"2024": (("WT", 2), ("TC", 1), ("ET", 3), ("RC", 4)), "2023": (("WT", 2), ("TC", 1), ("ET", 3)),
           "2021": (("WT", 2), ("TC", 1), ("ET", 4)), "msd": (("WT", 1), ("TC", 2), ("ET", 3))}


def tiny_weights(tmp_path):
    """An untrained network saved as the train stage saves weights (patch 16, trained at 1 mm)."""
    import torch

    from model import UNet3D
    from params import ModelParams
    from test_predict import ORIGIN
    from weights import current_spec, save, weights_payload
    torch.manual_seed(0)
    config = ModelParams(base_width=4, max_width=8, depth=3, norm="instance", deep_supervision=False)
    weights = tmp_path / "model.pt"
    save(weights, weights_payload(UNet3D(config).state_dict(), config, current_spec((16, 16, 16), (1.0,) * 3),
                                  {}, epoch=1, val={}, origin=ORIGIN))
    return weights


def test_predict_paints_each_editions_labels_from_its_own_regions_and_the_scorer_reads_them(tmp_path):
    weights = tiny_weights(tmp_path)
    folder, written = dataset(tmp_path, "2021")
    base = ["--weights", str(weights), "--input", str(folder), "--no-mirror", "--no-compile", "--overlap", "0",
            "--batch", "1", "--no-postprocessing", "--save-probabilities"]
    for edition in PAINTED:
        assert predict.main([*base, "--output", str(tmp_path / edition), "--labels", edition]) == 0
    both = 0
    for case in written:
        probs = np.load(tmp_path / "2024" / f"{case}.probs.npz")["probabilities"]
        fires = dict(zip(("WT", "TC", "ET", "RC"), probs > 127.5))
        both += int((fires["WT"] & fires["RC"]).sum())
        for edition, paint in PAINTED.items():
            expected = np.zeros(SHAPE, np.uint8)
            for region, value in paint:
                expected[fires[region]] = value
            got = np.asanyarray(nib.load(tmp_path / edition / f"{case}.nii.gz").dataobj)
            assert got.shape == SHAPE and (got == expected).mean() > 0.999, (edition, case)
    assert both > 0               # the untrained network fires WT and RC together somewhere: that case is tried
    # the scorer reads the 2021 ground truth in place; 2021-valued predictions read with --labels 2021
    # score as the same masks in 2023's values (2024's without RC)
    a = evaluate.score_folders(tmp_path / "2023", folder)
    b = evaluate.score_folders(tmp_path / "2021", folder, pred_labels="2021")
    assert a["cases"].keys() == set(written) and a == b


def test_scorer_reads_a_decathlon_task_in_place(tmp_path):
    folder, written = dataset(tmp_path, "msd")
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for case, (_, labels) in written.items():            # a perfect prediction, written in 2024 labels
        write_nifti(pred_dir / f"{case}.nii.gz", np.vectorize(TO_2024["msd"].get)(labels).astype(np.uint8),
                    np.eye(4))
    scores = evaluate.score_folders(pred_dir, folder)
    assert set(scores["cases"]) == set(written)
    assert all(scores["mean"][r]["iou"] == 1.0 for r in ("WT", "TC", "ET", "NETC", "SNFH", "RC"))


# --- every case is processed or named -------------------------------------------------------------

def _uppercase_suffix(folder, name):
    """An export that writes `_FLAIR.nii.gz`: read as the same file."""
    (folder / name / f"{name}_flair.nii.gz").rename(folder / name / f"{name}_FLAIR.nii.gz")


def _uppercase_extension(folder, name):
    for f in sorted((folder / name).iterdir()):
        f.rename(f.with_name(f.name.replace(".nii.gz", ".NII.GZ")))


# variant -> (edition of the folder, make the broken entry in it, what the error says)
BROKEN = {
    "empty folder": ("2021", lambda folder: (folder / "BraTS2021_00009").mkdir(), "BraTS2021_00009.*is empty"),
    "renamed without its files": ("2021", lambda folder: (folder / "BraTS2021_00000").rename(folder / "BraTS2021_00009"),
                                  "BraTS2021_00009: missing file BraTS2021_00009_t1.nii.gz.*BraTS2021_00000_"),
    "dangling link": ("2021", lambda folder: (folder / "BraTS2021_00009").symlink_to(folder.parent / "gone"),
                      "BraTS2021_00009: .*a link to .*gone, which does not exist"),
    "a file named as a case": ("2021", lambda folder: (folder / "BraTS20_Training_009").write_text("x"),
                               "BraTS20_Training_009: .*named like a case but is not a folder"),
    "nifti folder of no edition": ("2021", lambda folder: (folder / "BraTS2021_00000").rename(folder / "scan copy"),
                                   "scan copy: holds NIfTI files but is not a case"),
    "2024 dangling link": ("2024", lambda folder: (folder / "BraTS-GLI-00011-100").symlink_to(folder.parent / "gone"),
                           "BraTS-GLI-00011-100: .*a link to .*gone, which does not exist"),
    "2024 empty folder": ("2024", lambda folder: (folder / "BraTS-GLI-00011-100").mkdir(),
                          "BraTS-GLI-00011-100.*is empty"),
}


def broken_folder(tmp_path, variant):
    """Readable cases (in 2017-2021's layout two with upper-case file names) and one broken entry;
    returns the folder, the readable case names, the broken entry's name and what its error says."""
    edition, make, pattern = BROKEN[variant]
    folder, written = dataset(tmp_path, edition)
    extra, writer = {"2021": ("BraTS2021_00001", write_2021_layout),
                     "2024": ("BraTS-GLI-00010-100", write_2024_layout)}[edition]
    writer(folder, extra, modality_images(5), source_labels(edition, 5))
    if edition == "2021":
        _uppercase_suffix(folder, "Brats18_CBICA_AAB_1")
        _uppercase_extension(folder, "BraTS20_Training_001")
    before = {p.name for p in folder.iterdir()}
    make(folder)
    readable = sorted((set(written) | {extra}) & {p.name for p in folder.iterdir()})
    broken = ({p.name for p in folder.iterdir()} - before).pop()
    return folder, readable, broken, pattern


@pytest.mark.parametrize("variant", list(BROKEN))
def test_preprocess_reads_or_names_every_case_folder(tmp_path, params_for, variant):
    folder, readable, broken, pattern = broken_folder(tmp_path, variant)
    fail = params_for(paths__raw_dir=str(folder), preprocess__workers=1, preprocess__val_fraction=0.34,
                      preprocess__test_fraction=0.34)
    with pytest.raises(CaseError, match=pattern):
        preprocess(fail)
    assert not fail.paths.preprocessed_dir.exists()
    skip = params_for(paths__raw_dir=str(folder), preprocess__workers=1, preprocess__val_fraction=0.34,
                      preprocess__test_fraction=0.34, preprocess__on_error="skip")
    report = preprocess(skip)
    assert report["processed"] == len(readable) and set(report["skipped"]) == {broken}
    assert re.search(pattern, report["skipped"][broken])
    manifest = json.loads((skip.paths.preprocessed_dir / "manifest.json").read_text())
    assert sorted(manifest["cases"]) == readable          # upper-case file names read, not dropped


@pytest.mark.parametrize("variant", list(BROKEN))
def test_predict_reads_or_names_every_case_folder(tmp_path, variant, capsys):
    folder, readable, broken, pattern = broken_folder(tmp_path, variant)
    out = tmp_path / "out"
    args = ["--weights", str(tiny_weights(tmp_path)), "--input", str(folder), "--output", str(out), "--no-mirror",
            "--no-compile", "--overlap", "0", "--batch", "1", "--no-postprocessing"]
    assert predict.main(args) == 1
    said = capsys.readouterr()
    assert f"wrote {len(readable)} of {len(readable) + 1} predictions" in said.out
    assert re.search(pattern, said.err) and broken in said.err.splitlines()[-1]
    assert sorted(p.name.removesuffix(".nii.gz") for p in out.glob("*.nii.gz")) == readable
    record = json.loads((out / "predictions.json").read_text())
    assert set(record["failed"]) == {broken} and sorted(record["cases"]) == readable


def test_a_decathlon_task_beside_case_folders_is_a_mix_of_editions(tmp_path):
    folder, _ = dataset(tmp_path, "2021")
    write_msd_layout(folder, "BRATS_001", modality_images(0), source_labels("msd", 0))
    with pytest.raises(UserError, match=r"mixes editions: imagesTr/ .*Decathlon.* but BraTS2021_00000 .*2021"):
        find_cases(folder, RAW_DIR_HINT)


# --- the scorer reads each edition's ground truth as that edition ---------------------------------

def perfect_predictions(tmp_path, written, edition):
    """Each case's ground truth as a prediction in 2024's values."""
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir(exist_ok=True)
    for case, (_, labels) in written.items():
        write_nifti(pred_dir / f"{case}.nii.gz", np.vectorize(TO_2024[edition].get)(labels).astype(np.uint8),
                    np.eye(4))
    return pred_dir


def test_scorer_refuses_a_ground_truth_case_without_its_labels(tmp_path):
    folder, written = dataset(tmp_path, "2021")
    pred_dir = perfect_predictions(tmp_path, written, "2021")
    (folder / "Brats18_CBICA_AAB_1" / "Brats18_CBICA_AAB_1_seg.nii.gz").unlink()
    for only_predicted in (False, True):
        with pytest.raises(UserError, match=r"Brats18_CBICA_AAB_1: its ground truth .*_seg.nii.gz is missing "
                                            r"\(1 of 3 cases"):
            evaluate.score_folders(pred_dir, folder, only_predicted=only_predicted)


@pytest.mark.parametrize("edition", ["2021", "msd"])
@pytest.mark.parametrize("suffix", ["-seg.nii.gz", "_seg.nii.gz"])
def test_scorer_reads_flat_ground_truth_of_other_editions_with_their_labels(tmp_path, suffix, edition):
    folder, written = dataset(tmp_path, edition)
    flat = tmp_path / "flat"
    flat.mkdir()
    for case, (_, labels) in written.items():
        write_nifti(flat / f"{case}{suffix}", labels, np.eye(4))   # 2021: 4 is ET; msd: 1 is oedema
    scores = evaluate.score_folders(perfect_predictions(tmp_path, written, edition), flat)
    assert set(scores["cases"]) == set(written)
    assert all(scores["mean"][r]["dice"] == 1.0 for r in ("WT", "TC", "ET", "NETC", "SNFH"))


@pytest.mark.parametrize("gt, labels, fits", [("2024", "2021", False), ("2024", "msd", False), ("2021", "msd", False),
                                              ("2021", "2023", False), ("msd", "2021", False), ("2024", "2023", True),
                                              ("2023", "2024", True), ("2021", "2021", True), ("2021", "2024", True)])
def test_scorer_labels_that_contradict_the_ground_truth_are_one_line(tmp_path, gt, labels, fits):
    folder, written = dataset(tmp_path, gt)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for case, (_, source) in written.items():   # the ground truth in the values --labels announces
        meaning = np.vectorize(TO_2024[gt].get)(source).astype(np.uint8)
        write_nifti(pred_dir / f"{case}.nii.gz", EDITIONS[labels].from_2024(meaning), np.eye(4))
    if fits:
        scores = evaluate.score_folders(pred_dir, folder, pred_labels=labels)
        assert scores["mean"]["WT"]["dice"] == 1.0
    else:
        with pytest.raises(UserError, match=f"--labels {labels} contradicts the ground truth .*give --labels 2024 "
                                            f"or --labels {gt}"):
            evaluate.score_folders(pred_dir, folder, pred_labels=labels)
