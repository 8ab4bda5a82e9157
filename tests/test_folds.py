"""Cross-validation on the tiny config: three folds trained (train@0..2 in-process), post-processing
chosen on their out-of-fold predictions, and the ensemble that evaluate and predict.py run."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

import evaluate
import fit
import postprocess
import postprocessing
import predict
import train
from errors import UserError
from helpers import TINY, write_params
from layout import open_case
from params import load_params
from predictor import Predictor, Settings
from weights import fold_dir, fold_weights

FOLDS = [0, 1, 2]


@pytest.fixture(scope="module")
def folded(tiny_data, tmp_path_factory):
    """The tiny synthetic cases preprocessed with train.folds [0, 1, 2], every fold trained."""
    from preprocess import preprocess
    root = tmp_path_factory.mktemp("folds")
    params = load_params(write_params(root / "params.yaml", {
        **TINY, "train.folds": FOLDS, "paths.raw_dir": str(tiny_data / "data" / "synthetic"),
        "paths.synthetic_dir": str(tiny_data / "data" / "synthetic"),
        "lr": 0.003, "weight_decay": 1e-5, "beta1": 0.9, "beta2": 0.999}))
    preprocess(params)
    held_out = {}
    real_fit = fit.fit

    def recording_fit(parts, p, rt, val_cases, state, on_epoch):
        held_out[len(held_out)] = (sorted(parts.dataset.cases), sorted(val_cases))
        return real_fit(parts, p, rt, val_cases, state, on_epoch)
    train.fit = recording_fit
    try:
        for k in FOLDS:
            train.train(params, k)
    finally:
        train.fit = real_fit
    return params, held_out


def splits_of(params) -> dict:
    return json.loads((params.paths.preprocessed_dir / "splits.json").read_text())


def test_each_fold_trains_on_the_others_and_validates_on_its_own(folded):
    params, held_out = folded
    splits = splits_of(params)
    for k in FOLDS:
        assert held_out[k] == (sorted(splits["folds"][k]["train"]), sorted(splits["folds"][k]["val"]))
        assert (fold_dir(params.paths.models_dir, k) / "last.pt").exists()
        assert (params.paths.live_dir / f"fold_{k}" / "metrics.json").exists()
    states = [torch.load(w, weights_only=True)["state_dict"] for w in fold_weights(params.paths.models_dir, FOLDS)]
    assert not torch.equal(states[0]["heads.0.weight"], states[1]["heads.0.weight"])
    with pytest.raises(UserError, match=r"--fold 3: train.folds is \[0, 1, 2\]"):
        train.train(params, 3)


def test_postprocessing_is_chosen_on_every_out_of_fold_case(folded):
    params, _ = folded
    postprocess.postprocess(params)
    splits = splits_of(params)
    cv = json.loads((params.paths.metrics_dir / "cv.json").read_text())["cv"]
    assert cv["folds"] == 3 and cv["cases"] == len(splits["train"]) + len(splits["val"])
    assert [cv["per_fold"][str(k)]["cases"] for k in FOLDS] == [len(f["val"]) for f in splits["folds"]]
    recorded = json.loads((params.paths.models_dir / postprocessing.FILE).read_text())["weights"]
    assert [w["path"] for w in recorded] == [f"folds/fold_{k}/model.pt" for k in FOLDS]
    # the cross-validation IoU is the mean over the held-out cases of each fold's own prediction
    device = torch.device("cpu")
    settings = Settings.of(params.evaluate, device)
    from layout import load_manifest, native_labels, native_shape
    from metrics import case_scores
    manifest, wt = load_manifest(params.paths.preprocessed_dir), []
    pp = postprocessing.load(params.paths.models_dir / postprocessing.FILE, ("WT", "TC", "ET", "RC"))
    for k, weights in zip(FOLDS, fold_weights(params.paths.models_dir, FOLDS)):
        predictor = Predictor(weights, settings, device, pp)
        for case in splits["folds"][k]["val"]:
            entry = manifest[case]
            image = open_case(params.paths.preprocessed_dir, case)[0].read()
            spacing = tuple(entry["native_spacing_mm"])
            labels = predictor.labels(image, native_shape(entry), spacing)[1]
            wt.append(case_scores(labels, native_labels(params.paths.preprocessed_dir, case, entry), spacing)["WT"]["iou"])
    assert cv["iou"]["WT"] == pytest.approx(np.mean(wt), abs=1e-4)
    from stats import mean_interval           # and its interval is the bootstrap over those same cases
    ci = cv["ci95"]["iou"]["WT"]
    assert [ci["low"], ci["high"]] == pytest.approx(list(mean_interval(wt)), abs=1e-4)


def test_ensemble_averages_the_folds_and_predict_matches_evaluate(folded, tmp_path):
    params, _ = folded
    if not (params.paths.models_dir / postprocessing.FILE).exists():
        postprocess.postprocess(params)
    files = fold_weights(params.paths.models_dir, FOLDS)
    settings = Settings(0.5, 2, False, "fp32", False)
    case = splits_of(params)["test"][0]
    image = open_case(params.paths.preprocessed_dir, case)[0].read()
    ensemble = Predictor(files, settings, "cpu").probs(image)
    alone = [Predictor(f, settings, "cpu").probs(image) for f in files]
    assert torch.allclose(ensemble, sum(alone) / 3, atol=1e-6)
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)           # three different models
    metrics = evaluate.evaluate(params)
    assert metrics["cases"] == len(splits_of(params)["test"])
    assert "the mean probability of the 3 fold models" in params.paths.model_card.read_text()
    # a fold left over from an earlier train.folds is not mixed in: the post-processing file lists the set
    stale = fold_dir(params.paths.models_dir, 3)
    shutil.copytree(fold_dir(params.paths.models_dir, 0), stale)
    raw = tmp_path / "raw"
    shutil.copytree(params.paths.synthetic_dir / case, raw / case)
    params_file = str(params.paths.preprocessed_dir.parent.parent / "params.yaml")
    try:
        assert predict.main(["--weights", str(params.paths.models_dir), "--input", str(raw), "--output",
                             str(tmp_path / "pred"), "--params", params_file]) == 0
        # without post-processing too: the file still says which folds make the model set
        assert predict.main(["--weights", str(params.paths.models_dir), "--input", str(raw), "--output",
                             str(tmp_path / "raw-pred"), "--params", params_file, "--no-postprocessing"]) == 0
    finally:
        shutil.rmtree(stale)
    unprocessed = json.loads((tmp_path / "raw-pred" / "predictions.json").read_text())
    assert [w["path"] for w in unprocessed["weights"]["files"]] == [str(f) for f in files]
    ours = np.asanyarray(nib.load(tmp_path / "pred" / f"{case}.nii.gz").dataobj)
    stage = np.asanyarray(nib.load(params.paths.predictions_dir / f"{case}.nii.gz").dataobj)
    assert np.array_equal(ours, stage)
    record = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert [w["path"] for w in record["weights"]["files"]] == [str(f) for f in files]


def test_postprocessing_of_other_weights_is_refused(folded, tmp_path):
    params, _ = folded
    if not (params.paths.models_dir / postprocessing.FILE).exists():
        postprocess.postprocess(params)
    other = tmp_path / "other.pt"
    saved = torch.load(fold_weights(params.paths.models_dir, [0])[0], weights_only=True)
    saved["epoch"] = -7
    torch.save(saved, other)
    with pytest.raises(UserError, match=r"postprocessing.json was chosen for other weights"):
        postprocessing.check_weights(params.paths.models_dir / postprocessing.FILE, [other], exact=False)
    postprocessing.check_weights(params.paths.models_dir / postprocessing.FILE,
                                 fold_weights(params.paths.models_dir, [1]), exact=False)   # one fold of the set
    with pytest.raises(UserError, match=r"chosen for other weights"):
        postprocessing.check_weights(params.paths.models_dir / postprocessing.FILE,
                                     fold_weights(params.paths.models_dir, [1]))           # not the whole set


def test_unwritable_output_folder_stops_postprocess_before_predicting(folded, tmp_path, monkeypatch):
    params, _ = folded
    blocked = tmp_path / "metrics"
    blocked.write_text("a file where the metrics folder should be")
    monkeypatch.setattr(postprocess, "out_of_fold", lambda p: pytest.fail("predicted before checking the folders"))
    import dataclasses
    params = dataclasses.replace(params, paths=dataclasses.replace(params.paths, metrics_dir=blocked))
    with pytest.raises(UserError, match=r"cannot write to .*metrics .*postprocess writes postprocessing.json"):
        postprocess.postprocess(params)
