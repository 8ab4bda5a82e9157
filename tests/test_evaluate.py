"""The scorer on BraTS-format folders, its errors, and the evaluate stage on a tiny trained model."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

import evaluate
import postprocess
import postprocessing
import train
from errors import UserError
from weights import fold_weights
from postprocessing import Postprocessing
from nifti import CaseError, write_nifti

CASE = "BraTS-GLI-00001-100"


def folders(tmp_path, gt: np.ndarray, pred: np.ndarray | None, affine=np.eye(4), pred_affine=None, case=CASE):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    (gt_dir / case).mkdir(parents=True, exist_ok=True)
    pred_dir.mkdir(exist_ok=True)
    write_nifti(gt_dir / case / f"{case}-seg.nii.gz", gt.astype(np.uint8), affine)
    if pred is not None:
        write_nifti(pred_dir / f"{case}.nii.gz", pred, affine if pred_affine is None else pred_affine)
    return pred_dir, gt_dir


def cube(value: int, size: int = 3, at: int = 20) -> np.ndarray:
    a = np.zeros((64, 64, 64), np.uint8)
    a[at:at + size, at:at + size, at:at + size] = value
    return a


@pytest.mark.parametrize("gt, pred, dice, hd, counts", [
    (cube(3), np.zeros((64, 64, 64), np.uint8), 0.0, 337.0, (0, 0, 1)),   # missed lesion
    (np.zeros((64, 64, 64), np.uint8), cube(3), 0.0, 337.0, (0, 1, 0)),   # false positive
    (np.zeros((64, 64, 64), np.uint8), cube(3, size=2), 1.0, 0.0, (0, 0, 0)),  # 8 voxels: removed
    (cube(3), cube(3), 1.0, 0.0, (1, 0, 0)),
])
def test_worked_examples_through_the_command_line(tmp_path, gt, pred, dice, hd, counts):
    pred_dir, gt_dir = folders(tmp_path, gt, pred)
    out = tmp_path / "scores.json"
    evaluate.main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out)])
    result = json.loads(out.read_text())
    et = result["cases"][CASE]["ET"]
    assert et["lesionwise_dice"] == dice and et["lesionwise_hd95"] == hd
    assert (et["tp"], et["fp"], et["fn"]) == counts
    assert set(result["cases"][CASE]) == {"ET", "TC", "WT", "NETC", "SNFH", "RC"}
    assert set(et) == {"iou", "dice", "hd95", "lesionwise_dice", "lesionwise_hd95", "tp", "fp", "fn"}
    assert result["mean"]["ET"]["lesionwise_dice"] == dice


def test_seg_files_directly_in_the_gt_folder(tmp_path, capsys):
    gt = cube(2, size=6)
    pred_dir, gt_dir = folders(tmp_path, gt, gt)
    (gt_dir / CASE / f"{CASE}-seg.nii.gz").rename(gt_dir / f"{CASE}-seg.nii.gz")
    (gt_dir / CASE).rmdir()
    result = evaluate.score_folders(pred_dir, gt_dir)
    assert result["cases"][CASE]["WT"]["iou"] == 1.0
    evaluate.main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(tmp_path / "s.json")])
    assert "SNFH" in capsys.readouterr().out      # the table


def test_missing_prediction(tmp_path):
    pred_dir, gt_dir = folders(tmp_path, cube(2), None)
    with pytest.raises(UserError, match=rf"{CASE}: prediction .*{CASE}\.nii\.gz is missing.*--only-predicted"):
        evaluate.score_folders(pred_dir, gt_dir)
    with pytest.raises(UserError, match="none of the 1 ground-truth cases"):
        evaluate.score_folders(pred_dir, gt_dir, only_predicted=True)


def test_only_predicted_scores_a_subset_and_lists_the_rest(tmp_path, capsys):
    pred_dir, gt_dir = folders(tmp_path, cube(2), cube(2))
    other = "BraTS-GLI-00002-100"
    folders(tmp_path, cube(3), None, case=other)
    out = tmp_path / "s.json"
    evaluate.main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out), "--only-predicted"])
    result = json.loads(out.read_text())
    assert list(result["cases"]) == [CASE] and result["unscored"] == [other]
    assert result["mean"]["WT"]["iou"] == 1.0
    assert "1 ground-truth case(s) without a prediction were not scored" in capsys.readouterr().out


def test_shape_mismatch(tmp_path):
    pred_dir, gt_dir = folders(tmp_path, cube(2), cube(2)[:-1])
    with pytest.raises(UserError, match=rf"{CASE}: prediction shape \(63, 64, 64\) differs"):
        evaluate.score_folders(pred_dir, gt_dir)


def test_affine_mismatch(tmp_path):
    pred_dir, gt_dir = folders(tmp_path, cube(2), cube(2), pred_affine=np.diag([-1.0, -1, 1, 1]))
    with pytest.raises(UserError, match=rf"{CASE}: the prediction's affine differs"):
        evaluate.score_folders(pred_dir, gt_dir)


def test_invalid_label(tmp_path):
    pred_dir, gt_dir = folders(tmp_path, cube(2), cube(7))
    with pytest.raises(CaseError, match=rf"{CASE}: {CASE}\.nii\.gz: label value 7"):
        evaluate.score_folders(pred_dir, gt_dir)


def test_flags_go_together(tmp_path):
    with pytest.raises(SystemExit):
        evaluate.main(["--pred", str(tmp_path)])


@pytest.mark.parametrize("resampled", [False, True])
def test_evaluate_stage(tiny_params, tiny_data, tmp_path, request, resampled):
    # resampled: the 4 mm cases trained at 5 mm, predicted, scored and written on their own 4 mm grid
    data = request.getfixturevalue("tiny_data_resampled") if resampled else tiny_data
    params = tiny_params(data=data)
    train.train(params)
    postprocess.postprocess(params)
    pp_file = params.paths.models_dir / postprocessing.FILE
    assert json.loads(pp_file.read_text())["validation"]["tried"]
    cv = json.loads((params.paths.metrics_dir / "cv.json").read_text())["cv"]    # one fold: the validation split
    val_cases = json.loads((data / "data" / "preprocessed" / "splits.json").read_text())["val"]
    assert (cv["folds"], cv["cases"], cv["per_fold"]["0"]["cases"]) == (1, len(val_cases), len(val_cases))
    assert set(cv["iou"]) == set(cv["no_postprocessing"]["lesionwise_dice"]) == {"ET", "TC", "WT", "NETC", "SNFH", "RC"}
    # a post-processing that surely changes these masks: every ET becomes NETC
    postprocessing.save(pp_file, Postprocessing({**Postprocessing.none().min_mm3, "ET": 1e9}), {})
    metrics = evaluate.evaluate(params)
    written = json.loads((params.paths.metrics_dir / "evaluate.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    for key in ("iou", "dice", "hd95", "lesionwise_dice", "lesionwise_hd95"):
        assert set(written[key]) == {"ET", "TC", "WT", "NETC", "SNFH", "RC"}
    assert set(written["no_postprocessing"]) == {"iou", "lesionwise_dice", "lesionwise_hd95"}
    assert written["no_postprocessing"]["iou"]["WT"] == written["iou"]["WT"]     # ET -> NETC keeps WT
    card = params.paths.model_card.read_text()
    assert "Not for diagnosis" in card and "ET 1e+09 mm³" in card and "Apache-2.0" in card
    assert "t1n, t1c, t2w, t2f" in card
    # every IoU, Dice and lesion-wise Dice mean comes with its 95 % interval over the test cases
    assert set(written["ci95"]) == {"iou", "dice", "lesionwise_dice"}
    for key, per_region in written["ci95"].items():
        for region, ci in per_region.items():
            low, high = ci["low"], ci["high"]
            assert low - 1e-4 <= written[key][region] <= high + 1e-4, (key, region)
    ci = written["ci95"]["iou"]["WT"]
    assert f"| WT | {written['iou']['WT']:.3f} ({ci['low']:.3f}–{ci['high']:.3f}) |" in card
    assert "training seed `train.seed` 2024" in card
    before = (params.paths.metrics_dir / "evaluate.json").read_bytes()
    evaluate.evaluate(params)                                    # a rerun writes the same bytes
    assert (params.paths.metrics_dir / "evaluate.json").read_bytes() == before
    test_cases = json.loads((data / "data" / "preprocessed" / "splits.json").read_text())["test"]
    spacing = torch_load_spacing(fold_weights(params.paths.models_dir, [0])[0])
    assert spacing == ([5.0] * 3 if resampled else [4.0] * 3)
    rows = list(csv.DictReader(open(params.paths.metrics_dir / "evaluate_cases.csv")))
    assert [r["case"] for r in rows] == test_cases and written["cases"] == len(test_cases)
    assert len(list((params.paths.metrics_dir / "overlays").glob("*.png"))) == min(params.evaluate.overlays,
                                                                                   len(test_cases))
    # predictions are in BraTS format on the original grid
    for case in test_cases:
        pred = nib.load(params.paths.predictions_dir / f"{case}.nii.gz")
        source = nib.load(tiny_data / "data" / "synthetic" / case / f"{case}-t1n.nii.gz")
        assert pred.shape == source.shape and np.allclose(pred.affine, source.affine)
        assert pred.get_data_dtype() == np.uint8 and 3 not in np.asanyarray(pred.dataobj)   # post-processed
    # the stage's per-case IoU agrees with the scorer run on those files
    gt_dir = tmp_path / "gt"
    for case in test_cases:
        shutil.copytree(tiny_data / "data" / "synthetic" / case, gt_dir / case)
    scored = evaluate.score_folders(params.paths.predictions_dir, gt_dir)
    for row in rows:
        assert float(row["iou_WT"]) == pytest.approx(scored["cases"][row["case"]]["WT"]["iou"], abs=1e-4)
    # predict.py as the README's new-machine recipe runs it (defaults only) gives the same masks
    import predict
    assert predict.main(["--weights", str(params.paths.models_dir), "--input", str(gt_dir),
                         "--output", str(tmp_path / "predicted"), "--params", str(data / "params.yaml")]) == 0
    for case in test_cases:
        ours = np.asanyarray(nib.load(tmp_path / "predicted" / f"{case}.nii.gz").dataobj)
        stage = np.asanyarray(nib.load(params.paths.predictions_dir / f"{case}.nii.gz").dataobj)
        assert np.array_equal(ours, stage), case


def torch_load_spacing(path) -> list[float]:
    import torch
    return list(torch.load(path, weights_only=True)["inference"]["spacing_mm"])


def test_leaderboard_hd95_flag_reaches_the_scores(tmp_path):
    # a 2x2x2 oedema lesion numbered 1 and a 12^3 block numbered 2; the prediction is the block alone
    gt = np.zeros((64, 64, 64), np.uint8)
    gt[5:7, 5:7, 5:7] = 2
    gt[30:42, 30:42, 30:42] = 2
    pred = np.where(np.arange(64)[:, None, None] >= 30, gt, 0).astype(np.uint8)
    pred_dir, gt_dir = folders(tmp_path, gt, pred)
    scores = {}
    for flag in ([], ["--leaderboard-hd95"]):
        out = tmp_path / f"scores{len(flag)}.json"
        evaluate.main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out), *flag])
        scores[bool(flag)] = json.loads(out.read_text())["cases"][CASE]["WT"]
    assert scores[False]["hd95"] == 0.0 and scores[True]["hd95"] > 2.0
    assert scores[False]["lesionwise_dice"] == scores[True]["lesionwise_dice"]


def test_killed_evaluate_leaves_the_previous_set_whole(tiny_params, monkeypatch):
    params = tiny_params()
    train.train(params)
    postprocessing.save(params.paths.models_dir / postprocessing.FILE, Postprocessing.none(), {})
    evaluate.evaluate(params)
    out = [params.paths.predictions_dir, params.paths.metrics_dir]
    before = {p: p.read_bytes() for d in out for p in sorted(d.rglob("*")) if p.is_file()}
    real = evaluate.write_nifti
    calls = []

    def killed_at_the_second_case(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(*args)
    monkeypatch.setattr(evaluate, "write_nifti", killed_at_the_second_case)
    monkeypatch.setattr(evaluate, "mean_scores", lambda s: pytest.fail("not reached"))
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate(params)
    after = {p: p.read_bytes() for d in out for p in sorted(d.rglob("*")) if p.is_file()}
    assert after == before and len(calls) == 2
    assert not list(params.paths.predictions_dir.parent.glob(".tmp-*"))


def test_scorer_output_that_cannot_be_written_is_one_line(tmp_path, capsys):
    from errors import run_stage
    pred_dir, gt_dir = folders(tmp_path, cube(2), cube(2))
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as stop:
        run_stage(lambda: evaluate.main(["--pred", str(pred_dir), "--gt", str(gt_dir),
                                         "--out", str(tmp_path / "file" / "scores.json")]))
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and err[-1].startswith(f"error: {tmp_path / 'file'}")
    assert "File exists" in err[-1] or "Not a directory" in err[-1]


def test_predictions_without_ground_truth_are_listed_and_a_mixed_gt_folder_refused(tmp_path, capsys):
    pred_dir, gt_dir = folders(tmp_path, cube(2), cube(2))
    write_nifti(pred_dir / "BraTS-GLI-00005-100.nii.gz", cube(2), np.eye(4))      # no ground truth for it
    out = tmp_path / "s.json"
    evaluate.main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out)])
    assert json.loads(out.read_text())["without_ground_truth"] == ["BraTS-GLI-00005-100"]
    assert "1 prediction(s) without ground truth" in capsys.readouterr().out
    write_nifti(gt_dir / "BraTS-GLI-00005-100-seg.nii.gz", cube(2), np.eye(4))    # flat files beside a case folder
    with pytest.raises(UserError, match=rf"holds both <case>-seg.nii.gz files .* and case folders \({CASE}\)"):
        evaluate.score_folders(pred_dir, gt_dir)
