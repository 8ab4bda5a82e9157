"""predict.py writes valid BraTS submissions on the input's own grid, whatever its orientation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

import postprocessing
import predict
from errors import UserError
from postprocessing import Postprocessing
from helpers import write_case
from model import UNet3D
from params import ModelParams
from weights import current_spec, save, weights_payload

def run(args: list[str]) -> int:
    """predict.main without torch.compile (these networks and cases are too small for it to pay;
    test_compiled_prediction compiles)."""
    return predict.main([*args, "--no-compile"])


ORIGIN = {"training_data": {"path": "data/preprocessed", "md5": None}, "code": {"sha256": "0" * 64, "files": 0},
          "versions": {}}


@pytest.fixture
def weights(tmp_path) -> str:
    """A small untrained network saved as the train stage saves weights (patch 48, trained at 4 mm as
    the small synthetic cases are: other inputs are resampled to 4 mm)."""
    torch.manual_seed(0)
    config = ModelParams(base_width=4, max_width=8, depth=3, norm="instance", deep_supervision=False)
    path = tmp_path / "model.pt"
    save(path, weights_payload(UNet3D(config).state_dict(), config, current_spec((48, 48, 48), (4.0, 4.0, 4.0)),
                               {}, epoch=1, val={}, origin=ORIGIN))
    return str(path)


def lps_brats2021_case(folder, name: str):
    """A 240 × 240 × 155 case with an LPS affine diag(-1, -1, 1), as older BraTS editions store them."""
    rng = np.random.default_rng(0)
    images = np.zeros((4, 240, 240, 155), np.float32)
    images[:, 100:140, 90:130, 50:90] = rng.uniform(100, 1000, (4, 40, 40, 40))
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [0.0, 239.0, 0.0]
    return write_case(folder, name, images, None, affine), affine


def test_lps_240_case_keeps_its_shape_and_affine(tmp_path, weights):
    case_dir, affine = lps_brats2021_case(tmp_path / "in", "BraTS-GLI-00009-100")
    assert run(["--weights", weights, "--input", str(case_dir), "--output", str(tmp_path / "out")]) == 0
    out = nib.load(tmp_path / "out" / "BraTS-GLI-00009-100.nii.gz")
    assert out.shape == (240, 240, 155) and np.allclose(out.affine, affine)
    labels = np.asanyarray(out.dataobj)
    assert out.get_data_dtype() == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    head = np.zeros((240, 240, 155), bool)
    head[100:140, 90:130, 50:90] = True
    assert not labels[~head].any()       # nothing outside the head


def test_ras_and_mni_cases_in_a_folder(tmp_path, weights, small_case):
    images, labels, affine = small_case                          # synthetic: FSL MNI (LAS) affine
    write_case(tmp_path / "in", "BraTS-GLI-00001-100", images, None, affine)
    write_case(tmp_path / "in", "BraTS-GLI-00002-100", images, None, np.eye(4))
    assert run(["--weights", weights, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 0
    for name, aff in (("BraTS-GLI-00001-100", affine), ("BraTS-GLI-00002-100", np.eye(4))):
        out = nib.load(tmp_path / "out" / f"{name}.nii.gz")
        assert out.shape == images.shape[1:] and np.allclose(out.affine, aff)


def test_same_head_in_two_orientations_gets_the_same_prediction(tmp_path, weights, small_case):
    from test_preprocess import lps_copy
    images, labels, _ = small_case
    write_case(tmp_path / "in", "BraTS-GLI-00001-100", images, None, np.eye(4))
    lps_images, _, lps_affine = lps_copy(images, labels)
    write_case(tmp_path / "in", "BraTS-GLI-00002-100", lps_images, None, lps_affine)
    run(["--weights", weights, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    ras = np.asanyarray(nib.load(tmp_path / "out" / "BraTS-GLI-00001-100.nii.gz").dataobj)
    lps = np.asanyarray(nib.load(tmp_path / "out" / "BraTS-GLI-00002-100.nii.gz").dataobj)
    np.testing.assert_array_equal(ras, lps[::-1, ::-1])


def test_bad_case_is_reported_and_the_rest_still_written(tmp_path, weights, small_case, capsys):
    images, _, affine = small_case
    write_case(tmp_path / "in", "BraTS-GLI-00001-100", images, None, affine)
    bad = write_case(tmp_path / "in", "BraTS-GLI-00002-100", images, None, affine)
    (bad / "BraTS-GLI-00002-100-t1c.nii.gz").unlink()
    assert run(["--weights", weights, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 1
    assert (tmp_path / "out" / "BraTS-GLI-00001-100.nii.gz").exists()
    assert not (tmp_path / "out" / "BraTS-GLI-00002-100.nii.gz").exists()
    assert "BraTS-GLI-00002-100: missing file BraTS-GLI-00002-100-t1c.nii.gz" in capsys.readouterr().err
    with pytest.raises(UserError, match="missing file"):
        run(["--weights", weights, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o2"),
                      "--fail-fast"])


def test_missing_or_broken_weights(tmp_path):
    with pytest.raises(UserError, match="not found.*dvc pull"):
        run(["--weights", str(tmp_path / "none.pt"), "--input", str(tmp_path), "--output", str(tmp_path)])
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a weights file")
    with pytest.raises(UserError, match="cannot be loaded"):
        run(["--weights", str(broken), "--input", str(tmp_path), "--output", str(tmp_path)])
    empty = tmp_path / "models"
    empty.mkdir()
    with pytest.raises(UserError, match=r"models holds no weights \(folds/fold_K/model.pt"):
        run(["--weights", str(empty), "--input", str(tmp_path), "--output", str(tmp_path)])
    (empty / postprocessing.FILE).write_text('{"format": 1, "weights": [{"file": "fold_0/model.pt"}]}')
    with pytest.raises(UserError, match=r"postprocessing.json: its weights list is damaged"):
        run(["--weights", str(empty), "--input", str(tmp_path), "--output", str(tmp_path)])


@pytest.mark.parametrize("args, words", [
    (["--overlap", "1.0"], "--overlap 1.0: must be at least 0 and below 1"),
    (["--overlap", "-0.1"], "--overlap -0.1: must be at least 0"),
    (["--batch", "0"], "--batch 0: must be 1 or more"),
    (["--device", "cuda"], "--device cuda: no CUDA GPU is available here"),
    (["--device", "tpu9"], "--device 'tpu9': not a device"),
    (["--postprocessing", "pp.json", "--no-postprocessing"], "--postprocessing and --no-postprocessing exclude"),
    (["--cutoff", "WT=1.2"], "--cutoff: 'WT=1.2': give REGION=P, REGION one of WT, TC, ET, RC and P a probability"),
    (["--cutoff", "XX=0.5"], "--cutoff: 'XX=0.5': give REGION=P"),
    (["--cutoff", "WT"], "--cutoff: 'WT': give REGION=P"),
])
def test_bad_arguments_are_one_line_each(tmp_path, weights, capsys, args, words):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as stop:
        run(["--weights", weights, "--input", str(tmp_path), "--output", str(tmp_path / "o"), *args])
    assert stop.value.code == 2 and words in capsys.readouterr().err


def test_misnamed_case_folder_counts_as_failed(tmp_path, weights, small_case, capsys):
    images, _, affine = small_case
    write_case(tmp_path / "in", "BraTS-GLI-00001-100", images, None, affine)
    write_case(tmp_path / "in", "BraTS-GLI-0000-100", images, None, affine)
    (tmp_path / "in" / "README.txt").write_text("cases from site 3")
    assert run(["--weights", weights, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 1
    out = capsys.readouterr()
    assert "wrote 1 of 2 predictions" in out.out
    assert "BraTS-GLI-0000-100: named like a case" in out.err and "README.txt: a file, not a case folder" in out.err


def test_output_path_that_is_a_file_is_one_line(tmp_path, weights, small_case):
    import subprocess
    import sys

    from helpers import ROOT
    images, _, affine = small_case
    case = write_case(tmp_path / "in", "BraTS-GLI-00001-100", images, None, affine)
    (tmp_path / "taken").write_text("")
    done = subprocess.run([sys.executable, str(ROOT / "src" / "predict.py"), "--weights", weights, "--input", str(case),
                           "--output", str(tmp_path / "taken")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: cannot write to {tmp_path / 'taken'} (File exists)")


def test_weights_of_an_older_format_or_other_regions_are_refused(tmp_path):
    config = ModelParams(base_width=4, max_width=8, depth=3, norm="instance", deep_supervision=False)
    old = tmp_path / "old.pt"                      # the format before the inference section existed
    torch.save({"state_dict": UNet3D(config).state_dict(), "model": config.__dict__,
                "params": {"train.patch": [48, 48, 48]}, "epoch": 1, "val": {}}, old)
    with pytest.raises(UserError, match=r"old\.pt is not of format 3 \(found format none.*retrain"):
        run(["--weights", str(old), "--input", str(tmp_path), "--output", str(tmp_path / "o")])
    spec = current_spec((48, 48, 48), (4.0, 4.0, 4.0))
    no_provenance = weights_payload(UNet3D(config).state_dict(), config, spec, {}, 1, {}, ORIGIN)
    del no_provenance["provenance"]
    no_provenance["format"] = 2                    # as the train stage wrote weights before provenance
    save(tmp_path / "v2.pt", no_provenance)
    with pytest.raises(UserError, match=r"v2\.pt is not of format 3 \(found format 2: .*older version"):
        run(["--weights", str(tmp_path / "v2.pt"), "--input", str(tmp_path), "--output", str(tmp_path / "o")])
    no_inference = weights_payload(UNet3D(config).state_dict(), config, spec, {}, 1, {}, ORIGIN)
    del no_inference["inference"]                  # format 3, but a section is missing: say which
    save(tmp_path / "cut.pt", no_inference)
    with pytest.raises(UserError, match=r"cut\.pt is of format 3 but lacks inference \(damaged"):
        run(["--weights", str(tmp_path / "cut.pt"), "--input", str(tmp_path), "--output", str(tmp_path / "o")])
    other = tmp_path / "other.pt"
    save(other, weights_payload(UNet3D(config).state_dict(), config, spec.__class__(
        spec.patch, ("WT", "TC", "ET", "NETC"), spec.modalities, spec.spacing_mm, spec.edition), {}, 1, {}, ORIGIN))
    with pytest.raises(UserError, match=r"other\.pt was trained with regions .*NETC.* but this code uses"):
        run(["--weights", str(other), "--input", str(tmp_path), "--output", str(tmp_path / "o")])


def test_settings_default_to_the_evaluate_stage_and_are_recorded(tmp_path, weights, small_case):
    import hashlib
    import json

    from helpers import write_params
    images, _, affine = small_case
    write_case(tmp_path / "in", "BraTS-GLI-00001-100", images, None, affine)
    params = write_params(tmp_path / "params.yaml", {"evaluate.mirror": True, "evaluate.overlap": 0.25,
                                                     "evaluate.batch": 3})
    base = ["--weights", weights, "--input", str(tmp_path / "in"), "--params", str(params)]
    assert run([*base, "--output", str(tmp_path / "a")]) == 0
    assert run([*base, "--output", str(tmp_path / "b"), "--overlap", "0.25", "--mirror", "--batch", "1"]) == 0
    assert run([*base, "--output", str(tmp_path / "c"), "--no-mirror"]) == 0
    read = lambda d: np.asanyarray(nib.load(tmp_path / d / "BraTS-GLI-00001-100.nii.gz").dataobj)  # noqa: E731
    assert np.array_equal(read("a"), read("b"))
    record = json.loads((tmp_path / "a" / "predictions.json").read_text())
    assert record["settings"] == {"overlap": 0.25, "batch": 3, "mirror": True, "precision": "fp32", "compile": False,
                                  "device": "cpu",
                                  "probabilities": False, "labels": "2024", "cutoffs": {},
                                  "postprocessing": {"file": None, "min_mm3": Postprocessing.none().min_mm3}}
    assert record["weights"]["files"] == [{"path": str(weights),
                                           "sha256": hashlib.sha256(open(weights, "rb").read()).hexdigest()}]
    assert record["weights"]["inference"]["patch"] == [48, 48, 48]
    assert {"python", "torch", "numpy", "nibabel", "commit"} <= set(record["software"])
    case = record["cases"]["BraTS-GLI-00001-100"]
    assert case["input_shape"] == list(images.shape[1:]) and np.allclose(case["input_affine"], affine)
    assert case["seconds"] > 0
    c = json.loads((tmp_path / "c" / "predictions.json").read_text())
    assert c["settings"]["mirror"] is False and c["settings"]["overlap"] == 0.25


def test_probabilities_on_the_input_grid(tmp_path, weights, small_case):
    from brats import MODEL_REGIONS, regions_to_labels
    from test_preprocess import lps_copy
    images, labels, _ = small_case
    lps_images, _, lps_affine = lps_copy(images, labels)
    write_case(tmp_path / "in", "BraTS-GLI-00002-100", lps_images, None, lps_affine)
    assert run(["--weights", weights, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                         "--save-probabilities", "--no-mirror"]) == 0
    saved = np.load(tmp_path / "out" / "BraTS-GLI-00002-100.probs.npz")
    probs = saved["probabilities"]
    assert probs.dtype == np.uint8 and probs.shape == (len(MODEL_REGIONS), *images.shape[1:])
    assert tuple(saved["regions"]) == MODEL_REGIONS and np.allclose(saved["affine"], lps_affine)
    written = np.asanyarray(nib.load(tmp_path / "out" / "BraTS-GLI-00002-100.nii.gz").dataobj)
    assert (regions_to_labels(probs > 127.5) == written).mean() > 0.999   # the mask is the thresholded probs


def test_a_region_cutoff_cuts_that_region_only():
    """cut(): each region above its own cut-off (0.5 for the rest), painted as at 0.5: by hand on
    four voxels, WT at 0.8."""
    from brats import MODEL_REGIONS, PAINT
    #                      voxel:  0     1     2     3
    probs = torch.tensor([[0.90, 0.70, 0.60, 0.40],      # WT
                          [0.60, 0.60, 0.20, 0.10],      # TC
                          [0.10, 0.60, 0.10, 0.10],      # ET
                          [0.00, 0.00, 0.00, 0.00]])     # RC
    assert MODEL_REGIONS == ("WT", "TC", "ET", "RC")
    assert predict.cut(probs, MODEL_REGIONS, {}, PAINT).tolist() == [1, 3, 2, 0]
    # WT at 0.8: voxel 1 and 2 leave WT; TC and ET still paint over it where they fire (as at 0.5)
    assert predict.cut(probs, MODEL_REGIONS, {"WT": 0.8}, PAINT).tolist() == [1, 3, 0, 0]
    assert predict.cut(probs, MODEL_REGIONS, {"ET": 0.65, "TC": 0.55}, PAINT).tolist() == [1, 1, 2, 0]


def test_cutoff_is_applied_to_the_written_mask_and_recorded(tmp_path, weights, small_case):
    import json
    images, _, affine = small_case
    write_case(tmp_path / "in", "BraTS-GLI-00002-100", images, None, affine)
    common = ["--weights", weights, "--input", str(tmp_path / "in"), "--no-mirror", "--no-postprocessing"]
    assert run([*common, "--output", str(tmp_path / "plain"), "--save-probabilities"]) == 0
    probs = np.load(tmp_path / "plain" / "BraTS-GLI-00002-100.probs.npz")["probabilities"] / 255.0
    plain = np.asanyarray(nib.load(tmp_path / "plain" / "BraTS-GLI-00002-100.nii.gz").dataobj)
    et = plain == 3                                   # this untrained network paints ET and RC
    level = round(float(np.median(probs[2][et])), 3)  # half its ET voxels' probability
    assert et.sum() > 100 and level > 0.5
    assert run([*common, "--output", str(tmp_path / "cut"), "--cutoff", f"ET={level}"]) == 0
    cut = np.asanyarray(nib.load(tmp_path / "cut" / "BraTS-GLI-00002-100.nii.gz").dataobj)
    # the cut-off takes the ET voxels at or below it out of ET, and changes no other voxel
    gone = et & (cut != 3)
    assert 0.3 < gone.sum() / et.sum() < 0.7 and np.all(probs[2][gone] <= level + 1 / 255)
    assert np.array_equal(cut[~gone], plain[~gone])
    recorded = json.loads((tmp_path / "cut" / "predictions.json").read_text())["settings"]["cutoffs"]
    assert recorded == {"ET": level}


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, weights, small_case, capsys):
    import json
    images, _, affine = small_case
    write_case(tmp_path / "in", "BraTS-GLI-00001-100", images, None, affine)
    write_case(tmp_path / "in", "BraTS-GLI-00002-100", images, None, affine)
    args = ["--weights", weights, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--no-mirror"]
    assert run(args) == 0
    first = tmp_path / "out" / "BraTS-GLI-00001-100.nii.gz"
    first.write_bytes(b"kept")                         # an earlier run's output, as far as predict knows
    (tmp_path / "out" / "BraTS-GLI-00002-100.nii.gz").unlink()    # the case an interrupted run never wrote
    capsys.readouterr()
    assert run(args) == 0
    assert "wrote 1 of 2 predictions" in capsys.readouterr().out and first.read_bytes() == b"kept"
    assert (tmp_path / "out" / "BraTS-GLI-00002-100.nii.gz").exists()
    record = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert set(record["cases"]) == {"BraTS-GLI-00001-100", "BraTS-GLI-00002-100"}   # the skipped one kept
    assert run([*args, "--save-probabilities"]) == 0        # probabilities missing: redone
    assert first.read_bytes() != b"kept"
    first.write_bytes(b"kept")
    assert run([*args, "--overwrite"]) == 0 and first.read_bytes() != b"kept"


def test_an_output_the_record_does_not_hold_is_redone_and_temporaries_go(tmp_path, weights, small_case, capsys):
    """A run killed after writing a case's mask but before recording it (or while rewriting the
    record): the rerun redoes that case, records it, and removes what the killed run left."""
    import json
    images, _, affine = small_case
    for name in ("BraTS-GLI-00001-100", "BraTS-GLI-00002-100"):
        write_case(tmp_path / "in", name, images, None, affine)
    out = tmp_path / "out"
    args = ["--weights", weights, "--input", str(tmp_path / "in"), "--output", str(out), "--no-mirror"]
    assert run(args) == 0
    record_file = out / "predictions.json"
    record = json.loads(record_file.read_text())
    del record["cases"]["BraTS-GLI-00002-100"]              # the record as it was before the last case
    record_file.write_text(json.dumps(record))
    (out / ".predictions.json.tmp4242").write_text("{half")    # the rewrite the kill interrupted
    (out / ".BraTS-GLI-00002-100.nii.gz.tmp4242").write_bytes(b"half")
    capsys.readouterr()
    assert run(args) == 0
    assert "wrote 1 of 2 predictions" in capsys.readouterr().out
    assert set(json.loads(record_file.read_text())["cases"]) == {"BraTS-GLI-00001-100", "BraTS-GLI-00002-100"}
    assert sorted(p.name for p in out.iterdir()) == ["BraTS-GLI-00001-100.nii.gz", "BraTS-GLI-00002-100.nii.gz",
                                                     "predictions.json"]


@pytest.mark.parametrize("change", [["--labels", "2021"], ["--mirror"], ["--overlap", "0.25"],
                                    ["--postprocessing"], ["--weights"], ["--cutoff", "WT=0.7"]])
def test_resuming_with_other_weights_or_settings_is_refused(tmp_path, weights, small_case, change):
    images, _, affine = small_case
    for name in ("BraTS-GLI-00001-100", "BraTS-GLI-00002-100"):
        write_case(tmp_path / "in", name, images, None, affine)
    out = tmp_path / "out"
    first = ["--weights", weights, "--input", str(tmp_path / "in" / "BraTS-GLI-00001-100"), "--output", str(out),
             "--no-mirror", "--overlap", "0.5", "--no-postprocessing"]
    assert run(first) == 0
    written = (out / "BraTS-GLI-00001-100.nii.gz").read_bytes()
    again = [a.replace("BraTS-GLI-00001-100", "") for a in first]           # now the whole folder
    if change == ["--weights"]:
        other = tmp_path / "other.pt"
        other.write_bytes(open(weights, "rb").read())
        torch.manual_seed(1)
        config = ModelParams(base_width=4, max_width=8, depth=3, norm="instance", deep_supervision=False)
        save(other, weights_payload(UNet3D(config).state_dict(), config, current_spec((48, 48, 48), (4.0,) * 3),
                                    {}, epoch=1, val={}, origin=ORIGIN))
        again[1] = str(other)
    elif change == ["--postprocessing"]:
        rules = tmp_path / "rules.json"
        postprocessing.save(rules, Postprocessing({**Postprocessing.none().min_mm3, "ET": 1e9}), {})
        again = [a for a in again if a != "--no-postprocessing"] + ["--postprocessing", str(rules)]
    else:
        again = [a for a in again if a not in ("--no-mirror",)] + change if change == ["--mirror"] else again + change
    with pytest.raises(UserError, match=r"holds predictions of an earlier run made with .*--overwrite"):
        run(again)
    assert (out / "BraTS-GLI-00001-100.nii.gz").read_bytes() == written
    assert not (out / "BraTS-GLI-00002-100.nii.gz").exists()
    assert run([*again, "--overwrite"]) == 0 and (out / "BraTS-GLI-00002-100.nii.gz").exists()


def test_unwritable_probabilities_are_one_line(tmp_path, weights, small_case):
    import subprocess
    import sys

    from helpers import ROOT
    images, _, affine = small_case
    case = write_case(tmp_path / "in", "BraTS-GLI-00001-100", images, None, affine)
    out = tmp_path / "out"
    out.mkdir()
    (out / "BraTS-GLI-00001-100.probs.npz").mkdir()          # a folder where the file must go
    done = subprocess.run([sys.executable, str(ROOT / "src" / "predict.py"), "--weights", weights, "--input", str(case),
                           "--output", str(out), "--save-probabilities", "--no-mirror", "--no-compile"],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "BraTS-GLI-00001-100.probs.npz" in last
    assert not (out / "BraTS-GLI-00001-100.nii.gz").exists()        # nothing half-written for that case


def test_postprocessing_beside_the_weights_is_applied_and_recorded(tmp_path, weights, small_case, capsys):
    import json
    images, _, affine = small_case
    write_case(tmp_path / "in", "BraTS-GLI-00001-100", images, None, affine)
    args = ["--weights", weights, "--input", str(tmp_path / "in"), "--no-mirror", "--overlap", "0.5", "--batch", "2"]
    assert run([*args, "--output", str(tmp_path / "raw")]) == 0
    assert "masks are not post-processed" in capsys.readouterr().err     # no file beside the weights: said
    read = lambda d: np.asanyarray(nib.load(tmp_path / d / "BraTS-GLI-00001-100.nii.gz").dataobj)  # noqa: E731
    raw = read("raw")
    assert 3 in raw                                 # the untrained network paints some ET
    pp_file = tmp_path / postprocessing.FILE          # beside the weights, as `dvc pull` places it
    rules = Postprocessing({**Postprocessing.none().min_mm3, "ET": 1e9})
    postprocessing.save(pp_file, rules, {})
    assert run([*args, "--output", str(tmp_path / "pp")]) == 0
    done = read("pp")
    assert 3 not in done and np.array_equal(done, np.where(raw == 3, 1, raw))
    record = json.loads((tmp_path / "pp" / "predictions.json").read_text())
    assert record["settings"]["postprocessing"] == {"file": str(pp_file), "min_mm3": rules.min_mm3}
    assert run([*args, "--output", str(tmp_path / "off"), "--no-postprocessing"]) == 0
    assert np.array_equal(read("off"), raw)
    other = tmp_path / "elsewhere.json"
    postprocessing.save(other, Postprocessing.none(), {})
    assert run([*args, "--output", str(tmp_path / "given"), "--postprocessing", str(other)]) == 0
    assert np.array_equal(read("given"), raw)


def test_postprocessing_for_other_regions_is_one_line(tmp_path, weights, small_case):
    import subprocess
    import sys

    from helpers import ROOT
    images, _, affine = small_case
    case = write_case(tmp_path / "in", "BraTS-GLI-00001-100", images, None, affine)
    postprocessing.save(tmp_path / postprocessing.FILE, Postprocessing(Postprocessing.none().min_mm3, ("WT", "TC")), {})
    done = subprocess.run([sys.executable, str(ROOT / "src" / "predict.py"), "--weights", weights, "--input", str(case),
                           "--output", str(tmp_path / "out"), "--no-mirror", "--no-compile"], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "regions ['WT', 'TC']" in last and "repro postprocess" in last
    assert not (tmp_path / "out").exists()              # refused before anything was written


@pytest.mark.slow
def test_compiled_prediction_and_a_missing_compiler_is_one_line(tmp_path, weights, small_case):
    """--compile writes the masks the eager network writes; without a C++ compiler it is one line
    naming the flag, before any case is written."""
    import os
    import subprocess
    import sys

    from helpers import ROOT
    images, _, affine = small_case
    case = write_case(tmp_path / "in", "BraTS-GLI-00001-100", images, None, affine)
    base = [sys.executable, str(ROOT / "src" / "predict.py"), "--weights", weights, "--input", str(case),
            "--no-mirror", "--no-postprocessing", "--save-probabilities"]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    for name, flag in (("eager", "--no-compile"), ("compiled", "--compile")):
        done = subprocess.run([*base, "--output", str(tmp_path / name), flag], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
    read = lambda d: np.load(tmp_path / d / "BraTS-GLI-00001-100.probs.npz")["probabilities"].astype(int)  # noqa: E731
    assert np.abs(read("compiled") - read("eager")).max() <= 1          # uint8 probabilities: rounding only
    env = {**env, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "empty"), "CXX": str(tmp_path / "no-such-compiler")}
    done = subprocess.run([*base, "--output", str(tmp_path / "none"), "--compile"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --compile (evaluate.compile): torch.compile failed"), last
    assert not (tmp_path / "none" / "BraTS-GLI-00001-100.nii.gz").exists()


def test_an_unreadable_record_means_every_case_is_predicted_again(tmp_path, weights, small_case, capsys):
    images, _, affine = small_case
    write_case(tmp_path / "in", "BraTS-GLI-00001-100", images, None, affine)
    out = tmp_path / "out"
    args = ["--weights", weights, "--input", str(tmp_path / "in"), "--output", str(out), "--no-mirror"]
    assert run(args) == 0
    for broken in ("{not json", "[1, 2]", '{"cases": 3, "settings": "x", "weights": 1}'):
        (out / "predictions.json").write_text(broken)
        capsys.readouterr()
        assert run(args) == 0
        said = capsys.readouterr()
        assert "wrote 1 of 1 predictions" in said.out and "every case is predicted again" in said.err
