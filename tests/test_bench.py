"""The benchmarks' quick CPU mode runs, so that bench/ never rots (it measures nothing here)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from helpers import ROOT, bench_module


@pytest.mark.slow
def test_quick_benchmarks_run():
    # no timeout: a loaded machine may take long, and speed is not what this checks
    done = subprocess.run([sys.executable, "bench/run.py", "--quick"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("train step, ours", "preprocess", "loader, 2 workers", "mirror=True"):
        assert row in done.stdout


@pytest.mark.slow
def test_scale_benchmark_runs_and_writes_its_figures(tmp_path):
    out = tmp_path / "scale.json"
    done = subprocess.run([sys.executable, "bench/scale.py", "--cases", "2", "--workers", "2", "--grid", "48", "56",
                           "48", "--spacing", "4", "--patch", "32", "--batches", "2", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["loader"]) == {"none, 2 workers", "light, 2 workers", "full, 2 workers"}
    assert result["bytes per case"]["preprocessed / raw"] < 1.5          # the compact store is compact
    assert set(result["storage choices"]) == {"npy float32", "npy float16", "blosc2 LZ4 float16",
                                              "blosc2 ZSTD float16"}
    assert "extrapolated to 1350 cases, 16 cores" in result


@pytest.mark.slow
def test_cpu_benchmark_runs_the_train_stage_path_and_writes_its_figures(tmp_path):
    out = tmp_path / "cpu.json"
    done = subprocess.run([sys.executable, "bench/cpu.py", "--steps", "1", "--cases", "1", "--no-compile",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    configs = {"plain", "channels-last", "channels-last, var_mean norm"}
    if {"avx512_bf16", "amx_bf16"} & set(result["cpu"].get("flags", [])):   # measured only where native
        configs.add("channels-last, bf16 autocast")
    assert set(result["rows"]) == {f"{what}, {c}" for what in ("train step", "predict.py per case") for c in configs}
    assert result["rows"]["train step, plain"]["x plain"] == 1.0
    assert result["batch"][1] == 4 and "threads" in result["cpu"]          # 4 modalities


@pytest.mark.slow
def test_real_data_benchmark_cross_validates_and_writes_its_figures(tmp_path, tiny_data, tiny_params):
    """bench/real.py on the tiny synthetic cases (in place of real ones), 2 folds, tiny settings,
    starting from a tiny network's weights (as the recipe starts from the synthetic set's)."""
    import train
    from helpers import ADAM, TINY
    start = tiny_params()
    train.train(start)
    keys = {k: v for k, v in {**TINY, **ADAM}.items() if k.split(".")[0] in ("model", "train", "lr", "weight_decay",
                                                                              "beta1", "beta2")}
    overrides = [f"-S{k}={json.dumps(v)}" for k, v in {**keys, "preprocess.spacing_mm": 5.0,
                                                       "evaluate.mirror": False}.items()]
    out = tmp_path / "real.json"
    done = subprocess.run([sys.executable, "bench/real.py", "--data", str(tiny_data / "data" / "synthetic"),
                           "--out", str(out), "--work", str(tmp_path / "work"), "--folds", "2", "--init",
                           str(start.paths.models_dir / "folds" / "fold_0" / "model.pt"),
                           *overrides],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    cases = sorted(p.name for p in (tiny_data / "data" / "synthetic").iterdir())
    assert sorted(result["per_case"]) == cases                     # every case scored once, unseen
    folds = result["fold_patients"]
    assert sorted(sum(folds, [])) == sorted({c.rsplit("-", 1)[0] for c in cases})
    for case, scores in result["per_case"].items():
        assert case.rsplit("-", 1)[0] in folds[scores["fold"]]       # scored by the model of its fold
    assert set(result["mean"]) >= {"dice_WT", "iou_TC", "lesionwise_dice_ET"}
    low, high = result["ci95"]["dice_WT"]                           # with its interval over the cases
    assert low <= result["mean"]["dice_WT"] <= high and result["institutions"]["all"]["cases"] == len(cases)
    assert result["overrides"]["preprocess.spacing_mm"] == 5.0 and set(result["minutes"]) == {"preprocess", "0", "1"}
    for fold in ("0", "1"):                                      # each fold's network started from those weights
        saved = torch.load(tmp_path / "work" / "folds" / fold / "models" / "folds" / "fold_0" / "model.pt", weights_only=True)
        assert saved["provenance"]["init_weights"]["path"] == str(start.paths.models_dir / "folds" / "fold_0" / "model.pt")
    # the kept probabilities, cut at 0.5 without post-processing, score as the evaluate stage scored them
    # before its post-processing; the cut-offs and rules of each fold were chosen on the other fold's cases
    choice = result["out_of_fold_choice"]
    assert sorted(choice["per_case"]) == cases and set(choice["chosen"]) == {"0", "1"}
    for fold in ("0", "1"):
        raw = json.loads((tmp_path / "work" / "folds" / fold / "metrics" / "evaluate.json").read_text())
        ours = [s for s in choice["per_case"].values() if s["fold"] == int(fold)]
        for region in ("WT", "TC", "ET"):
            mean = np.mean([s[f"plain_lesionwise_dice_{region}"] for s in ours])
            assert mean == pytest.approx(raw["no_postprocessing"]["lesionwise_dice"][region], abs=2e-4)
        assert choice["chosen"][fold]["chosen_on"] == len(cases) - len(ours)
        assert set(choice["chosen"][fold]["cutoffs"].values()) <= set(bench_module("oof").CUTOFFS)

    # the cascade on that run: a second stage trained per fold at the cases' own spacing, from the fold's
    # weights; its first-stage scores are real.py's, and every refined case stays on its own grid
    out = tmp_path / "cascade.json"
    done = subprocess.run([sys.executable, "bench/cascade.py", "--stage1", str(tmp_path / "work"), "--out", str(out),
                           "--work", str(tmp_path / "cascade"),
                           *(o for o in overrides if not o.startswith("-Spreprocess.spacing_mm")), "-Strain.epochs=1"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cascade = json.loads(out.read_text())
    assert set(cascade["variants"]) == {"stage1", "core", "all"}
    for case, scores in cascade["variants"]["stage1"]["per_case"].items():
        assert scores == {k: v for k, v in choice["per_case"][case].items() if k == "fold" or k.startswith("plain_")}
    for variant in ("core", "all"):
        assert sorted(cascade["variants"][variant]["per_case"]) == cases
        for case in cases:
            refined = np.load(tmp_path / "cascade" / "probabilities" / variant / f"{case}.npz")["probs"]
            first = np.load(tmp_path / "work" / "probabilities" / f"{case}.npz")["probs"]
            assert refined.shape == first.shape
            if variant == "core":                               # the whole tumour is the first stage's
                assert np.array_equal(refined[0], first[0])


@pytest.mark.slow
def test_sim2real_scores_a_model_on_labelled_cases_and_compares_statistics(tmp_path, tiny_data, tiny_params):
    """bench/sim2real.py on the tiny synthetic cases standing in for real ones, with a tiny trained
    network: every case scored, the targets reported, the statistics of both sets written."""
    import train
    params = tiny_params()
    train.train(params)
    cases = tiny_data / "data" / "synthetic"
    out = tmp_path / "s2r.json"
    done = subprocess.run([sys.executable, "bench/sim2real.py", "--data", str(cases), "--synthetic", str(cases),
                           "--weights", str(params.paths.models_dir), "--out", str(out),
                           "--plot", str(tmp_path / "s2r.png"), "--params", str(tiny_data / "params.yaml"),
                           "--work", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    names = sorted(p.name for p in cases.iterdir())
    assert sorted(result["score"]["per_case"]) == names
    assert set(result["score"]["targets"]) == {"WT dice", "TC dice", "min case WT dice"}
    wt = [c["dice_WT"] for c in result["score"]["per_case"].values()]
    assert result["score"]["targets"]["min case WT dice"]["measured"] == pytest.approx(min(wt), abs=1e-4)
    assert result["score"]["mean"]["dice_WT"] == pytest.approx(sum(wt) / len(wt), abs=1e-4)
    assert set(result["score"]["ci95"]) == set(result["score"]["mean"]) and result["score"]["institutions"]
    # the volume shares: P/G = 1 - missed + false for every case, and one case counted by hand from its files
    for c in result["score"]["per_case"].values():
        assert c["volume_ratio_WT"] == pytest.approx(1 - c["missed_share_WT"] + c["false_share_WT"], abs=2e-4)
        assert 0 <= c["false_low_share_WT"] <= 1
    import nibabel as nib
    first = names[0]
    pred = np.asanyarray(nib.load(tmp_path / "work" / "predictions" / f"{first}.nii.gz").dataobj) > 0
    truth = np.asanyarray(nib.load(cases / first / f"{first}-seg.nii.gz").dataobj) > 0
    assert result["score"]["per_case"][first]["volume_ratio_WT"] == pytest.approx(pred.sum() / truth.sum(), abs=1e-4)
    assert result["score"]["per_case"][first]["missed_share_WT"] == pytest.approx((truth & ~pred).sum() / truth.sum(), abs=1e-4)
    # the same folder on both sides: the same statistics
    assert result["statistics"]["real"] == result["statistics"]["synthetic"]
    # a hand-checkable statistic: the WT volume of each case from its seg file
    case = names[0]
    seg = nib.load(cases / case / f"{case}-seg.nii.gz")
    voxel_cm3 = abs(np.linalg.det(seg.affine[:3, :3])) / 1000
    expected = np.count_nonzero(np.asanyarray(seg.dataobj)) * voxel_cm3
    assert result["per_case_statistics"]["real"][case]["wt_cm3"] == pytest.approx(expected, abs=1e-3)
    assert (tmp_path / "s2r.png").stat().st_size > 0


def test_whole_tumour_volumes_by_hand():
    """Expert: 10 voxels; prediction: 6 of them and 9 outside, labelled with any tumour label."""
    sim2real = bench_module("sim2real")
    gt, pred = np.zeros((5, 5, 5), np.uint8), np.zeros((5, 5, 5), np.uint8)
    gt[0, :2, :5] = 2
    pred[0, 0, :5], pred[0, 1, 0] = 1, 3
    pred[3, :3, :3] = 2
    assert sim2real.whole_tumour_volumes(pred, gt) == {"volume_ratio_WT": 1.5, "false_share_WT": 0.9,
                                                      "missed_share_WT": 0.4}
    assert sim2real.whole_tumour_volumes(pred, np.zeros_like(gt))["volume_ratio_WT"] == 15.0


def test_false_whole_tumour_in_the_lowest_third_of_the_head_by_hand():
    """A head spanning slabs 1-6 of 8 along the superior axis (its lowest third: slabs 1-2); false
    tumour: 4 voxels in slab 1, 4 in slab 5, so half of it is low. With the superior axis reversed in
    the affine the lowest third is slabs 5-6, and with the array axes swapped it follows the axis."""
    sim2real = bench_module("sim2real")
    head = np.zeros((4, 4, 8), bool)
    head[:, :, 1:7] = True
    gt, pred = np.zeros((4, 4, 8), np.uint8), np.zeros((4, 4, 8), np.uint8)
    gt[0, 0, 3] = 2
    pred[0, 0, 3] = 2
    pred[2:4, 2:4, 1] = 1
    pred[2:4, 2:4, 5] = 2
    low = sim2real.lowest_third(head, np.eye(4))
    assert low[0, 0].tolist() == [True, True, True, False, False, False, False, False]   # below 1 + 6/3
    assert sim2real.whole_tumour_volumes(pred, gt, low)["false_low_share_WT"] == 0.5
    flipped = np.diag([1.0, 1.0, -1.0, 1.0])
    assert sim2real.lowest_third(head, flipped)[0, 0].tolist() == [False] * 5 + [True] * 3        # from 7 - 6/3 up
    swapped = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)     # array axis 0 is up
    assert sim2real.lowest_third(head.transpose(2, 1, 0), swapped)[:, 0, 0].tolist() == low[0, 0].tolist()
    assert sim2real.whole_tumour_volumes(gt, gt, low)["false_low_share_WT"] == 0.0           # nothing false
    assert "false_low_share_WT" not in sim2real.whole_tumour_volumes(pred, gt)


def test_sim2real_missing_weights_is_one_line(tmp_path, small_case):
    from helpers import write_case
    images, labels, affine = small_case
    write_case(tmp_path / "real", "BraTS-GLI-00001-100", images, labels, affine)
    out = tmp_path / "s2r.json"
    done = subprocess.run([sys.executable, "bench/sim2real.py", "--data", str(tmp_path / "real"), "--synthetic",
                           str(tmp_path / "real"), "--weights", str(tmp_path / "none.pt"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: weights file {tmp_path / 'none.pt'} not found")
    assert not out.exists()


@pytest.mark.slow
def test_recipe_benchmark_trains_twice_and_compares_the_weights(tmp_path):
    """bench/recipe.py shrunk to a CPU (its -S overrides come last): two deterministic runs give the
    same weights, and each epoch's patches/s is read from the train stage's own lines."""
    from helpers import SMALL_GRID, SMALL_SPACING
    tiny = {"synthesize.grid": list(SMALL_GRID), "synthesize.spacing_mm": SMALL_SPACING, "synthesize.workers": 1,
            "preprocess.workers": 1, "preprocess.val_fraction": 0.34, "model.base_width": 4, "model.max_width": 16,
            "model.depth": 3, "train.patch": [16, 16, 16], "train.precision": "fp32", "train.compile": False,
            "train.workers": 0, "train.iterations_per_epoch": 2, "train.val_batch": 4}
    out = tmp_path / "recipe.json"
    cmd = [sys.executable, "bench/recipe.py", "--work", str(tmp_path / "work"), "--out", str(out),
           "--patients", "3", "--epochs", "2"]
    for key, value in tiny.items():
        cmd += ["-S", f"{key}={json.dumps(value)}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["identical weights"] is True and "identical weights" in done.stdout
    assert [r["epochs"] for r in result["runs"]] == [2, 2]
    assert all(len(r["patches/s by epoch"]) == 2 and min(r["patches/s by epoch"]) > 0 for r in result["runs"])
    assert result["settings"]["train.iterations_per_epoch"] == 2 and result["settings"]["train.augment"] == "full"


def test_hardness_benchmark_scores_every_case_of_each_seed(tmp_path):
    """bench/hardness.py on a tiny synthetic set, two seeds: one figure set per seed over every case that
    seed plans, and the pooled verdict; a params file that is not there is one line."""
    import yaml
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["synthesize"].update(patients=2, visits=2, grid=[40, 48, 40], spacing_mm=4.0, workers=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "hardness.json"
    done = subprocess.run([sys.executable, "bench/hardness.py", "--seeds", "5", "6", "--params",
                           str(tmp_path / "params.yaml"), "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    from params import SynthesizeParams
    from synthesize import plan
    tiny = SynthesizeParams(patients=2, visits=2, grid=(40, 48, 40), spacing_mm=4.0, workers=1)
    for seed in (5, 6):
        figures = result["seeds"][str(seed)]
        assert figures["cases"] == len(plan(tiny, seed))
        assert 0 < figures["median"] <= figures["max"] <= 1
        assert f"seed {seed}: {figures['cases']} cases" in done.stdout
    assert result["pooled"]["cases"] == sum(result["seeds"][s]["cases"] for s in ("5", "6"))
    assert "pooled: " in done.stdout
    missing = subprocess.run([sys.executable, "bench/hardness.py", "--params", str(tmp_path / "none.yaml")],
                             cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "none.yaml: not found" in missing.stderr.strip().splitlines()[-1]


def test_hardness_summary_and_pooled_verdict_by_hand():
    """Median, maximum and share at 0.7 or more of hand-picked per-case figures; the pooled verdict
    against the real cases (median 0.53, share 0.40, maximum 0.86)."""
    from helpers import bench_module
    hardness = bench_module("hardness")
    assert hardness.summary([0.3, 0.4, 0.5, 0.75]) == {"cases": 4, "median": 0.45, "max": 0.75, "share_at_0.7": 0.25}
    harder = hardness.pooled_verdict([0.3, 0.4, 0.5, 0.6] * 10)           # every case below the real median
    assert harder["limits_hold"] and harder["share_at_0.7_ci95"] == [0.0, 0.0] and harder["p95"] == 0.6
    easier = hardness.pooled_verdict([0.6, 0.72, 0.75, 0.8] * 10)         # median 0.735: wholly above 0.53
    assert not easier["holds"]["median"] and easier["median_ci95"][0] > 0.53
    assert not easier["holds"]["share_at_0.7"] and not easier["limits_hold"]   # share 0.75: above 0.40
    assert hardness.pooled_verdict([0.6, 0.65, 0.7, 0.72] * 10)["holds"]["share_at_0.7"]   # 0.5: 40 cases cannot tell
    peaks = hardness.pooled_verdict([0.3] * 18 + [0.9, 0.95])             # 95th percentile 0.9025 > 0.86
    assert peaks["holds"]["median"] and not peaks["holds"]["p95_below_real_max"]

def test_real_data_report_gives_intervals_and_institutions():
    """bench/report.py on hand-picked per-case scores: the mean, its bootstrap interval, and the means per
    institution read from BraTS 2018 names (ids without one form the group `all`)."""
    from helpers import bench_module
    report = bench_module("report")
    per_case = {"Brats18_CBICA_AAB_1": {"dice_WT": 0.5}, "Brats18_CBICA_ABC_1": {"dice_WT": 0.7},
                "Brats18_TCIA01_131_1": {"dice_WT": 0.9}, "Brats18_2013_2_1": {"dice_WT": 0.8},
                "BraTS2021_00000": {"dice_WT": 0.6}}
    out = report.summarise(per_case)
    assert out["mean"] == {"dice_WT": 0.7}
    low, high = out["ci95"]["dice_WT"]
    assert 0.5 <= low < 0.7 < high <= 0.9
    assert out["institutions"] == {"2013": {"cases": 1, "dice_WT": 0.8}, "CBICA": {"cases": 2, "dice_WT": 0.6},
                                   "TCIA01": {"cases": 1, "dice_WT": 0.9}, "all": {"cases": 1, "dice_WT": 0.6}}


def test_real_data_report_pools_runs_of_several_seeds(tmp_path):
    from helpers import bench_module
    report = bench_module("report")
    a = {"Brats18_CBICA_AAB_1": {"dice_WT": 0.5, "fold": 0}, "Brats18_TCIA01_131_1": {"dice_WT": 0.9, "fold": 1}}
    b = {"Brats18_CBICA_AAB_1": {"dice_WT": 0.7, "fold": 0}, "Brats18_TCIA01_131_1": {"dice_WT": 0.9, "fold": 1}}
    for name, per_case in (("a", a), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"per_case": per_case}))
    out = report.pool({n: report.per_case_of(tmp_path / f"{n}.json") for n in ("a", "b")})
    assert out["per_run"] == {"a": {"dice_WT": 0.7}, "b": {"dice_WT": 0.8}}
    assert out["seed_mean"]["dice_WT"] == 0.75 and out["seed_sd"]["dice_WT"] == pytest.approx(0.0707, abs=1e-4)
    assert out["pooled"]["institutions"]["CBICA"] == {"cases": 1, "dice_WT": 0.6}
    (tmp_path / "c.json").write_text(json.dumps({"per_case": {"Brats18_2013_2_1": {"dice_WT": 0.5}}}))
    done = subprocess.run([sys.executable, "bench/report.py", str(tmp_path / "a.json"), str(tmp_path / "c.json")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "scored different cases" in done.stderr and "Traceback" not in done.stderr


def test_out_of_fold_cutoffs_are_chosen_on_the_other_folds_cases(tmp_path):
    """Hand-built probabilities: the enhancing tumour's probability is 0.4 inside its lesion and 0
    elsewhere, so only a cut-off below 0.4 finds it (0.35, the nearest to 0.5 of those); the whole
    tumour's is 0.9 inside, 0.45 around it, so 0.5 (and up) is right; fold 1's cases, scored with
    fold 0's choice, are different (ET at 0.2) and fall below it."""
    oof = bench_module("oof")
    regions = np.array(["WT", "TC", "ET", "RC"])

    def case(name, et_prob):
        labels = np.zeros((12, 12, 12), np.uint8)
        labels[2:10, 2:10, 2:10] = 2
        labels[4:8, 4:8, 4:8] = 3
        probs = np.zeros((4, 12, 12, 12), np.float32)
        probs[0][1:11, 1:11, 1:11] = 0.45
        probs[0][labels > 0] = 0.9
        probs[1][labels == 3] = 0.8
        probs[2][labels == 3] = et_prob
        np.savez_compressed(tmp_path / f"{name}.npz", probs=probs.astype(np.float16), regions=regions,
                            labels=labels, spacing=np.ones(3))

    for name in ("a", "b"):
        case(name, 0.4)
    case("c", 0.2)
    result = oof.choose_and_score(tmp_path, {"a": 0, "b": 0, "c": 1}, (0.0,), (0.0,), 0.0)
    assert result["chosen"]["1"]["cutoffs"] == {"WT": 0.5, "TC": 0.5, "ET": 0.35}        # chosen on a and b
    assert result["chosen"]["1"]["chosen_on"] == 2
    assert result["per_case"]["c"]["cutoffs_dice_ET"] == 0.0                            # 0.2 < 0.35
    assert result["per_case"]["c"]["plain_dice_WT"] == 1.0
    # fold 0 chosen on c alone: ET at 0.2 needs a cut-off below it, which CUTOFFS has not: any is as bad,
    # so 0.5 stays; a and b then miss their ET as the plain cut does
    assert result["chosen"]["0"]["cutoffs"]["ET"] == 0.5
    assert result["per_case"]["a"]["plain_dice_ET"] == result["per_case"]["a"]["cutoffs_dice_ET"] == 0.0


def test_institutions_are_held_out_whole_and_the_folds_balanced():
    """Hand-counted: 2013 has 4 cases, CBICA 3, TCIA01 2, TCIA02 1. Largest first, each into the fold
    with the fewest cases: 2013 -> fold 0 (4), CBICA -> fold 1 (3), TCIA01 -> fold 2 (2), and TCIA02
    -> fold 2 again, the emptiest (2 < 3 < 4)."""
    real = bench_module("real")
    cases = ([f"Brats18_2013_{i}_1" for i in range(4)] + [f"Brats18_CBICA_A{i}_1" for i in range(3)]
             + [f"Brats18_TCIA01_{i}_1" for i in range(2)] + ["Brats18_TCIA02_9_1"])
    folds = real.fold_institutions({c: c for c in cases}, 3)
    assert folds == [sorted(cases[:4]), sorted(cases[4:7]), sorted(cases[7:])]
    with pytest.raises(real.UserError, match="4 institution"):
        real.fold_institutions({c: c for c in cases}, 5)


def test_finetune_subsets_are_nested_disjoint_from_the_unseen_and_grouped_by_patient():
    finetune = bench_module("finetune")
    patients = {f"case-{i}-{v}": f"p{i}" for i in range(10) for v in range(1 + i % 2)}   # some with two visits
    unseen, training = finetune.subsets(patients, [2, 4, 6], 3, 2024)
    assert len({patients[c] for c in unseen}) == 3
    assert set(training[2]) <= set(training[4]) <= set(training[6])
    assert [len({patients[c] for c in training[n]}) for n in (2, 4, 6)] == [2, 4, 6]
    assert not set(training[6]) & set(unseen)
    for group in (unseen, *training.values()):          # a patient's visits never split
        assert all(c in group for c in patients if patients[c] in {patients[g] for g in group})
    assert finetune.subsets(patients, [2, 4, 6], 3, 2024) == (unseen, training)     # seeded
    with pytest.raises(finetune.UserError, match="need 11 patients; the data hold 10"):
        finetune.subsets(patients, [8], 3, 2024)


@pytest.mark.slow
def test_finetune_curve_trains_both_starts_and_scores_the_same_unseen_cases(tmp_path, tiny_data, tiny_params):
    """bench/finetune.py on the tiny synthetic cases (in place of real ones): every size trained from the
    given weights and from random ones, the same unseen cases scored by each run, the paired difference
    of the two starts computed from those per-case scores."""
    import train
    from helpers import ADAM, TINY
    start = tiny_params()
    train.train(start)
    init = start.paths.models_dir / "folds" / "fold_0" / "model.pt"
    keys = {k: v for k, v in {**TINY, **ADAM}.items() if k.split(".")[0] in ("model", "train", "lr", "weight_decay",
                                                                              "beta1", "beta2") and k != "train.epochs"}
    overrides = [f"-S{k}={json.dumps(v)}" for k, v in {**keys, "preprocess.spacing_mm": 5.0,
                                                       "evaluate.mirror": False}.items()]
    out = tmp_path / "finetune.json"
    done = subprocess.run([sys.executable, "bench/finetune.py", "--data", str(tiny_data / "data" / "synthetic"),
                           "--init", str(init), "--sizes", "1", "3", "--test", "2", "--epochs", "1",
                           "--work", str(tmp_path / "work"), "--out", str(out), "--plot", str(tmp_path / "curve.png"),
                           *overrides], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["sizes"] == [1, 3] and len(result["unseen"]) == 2
    assert set(result["training"]["1"]) < set(result["training"]["3"]) and not set(result["training"]["3"]) & set(result["unseen"])
    runs = tmp_path / "work" / "runs"
    for n in ("1", "3"):
        scored = {}
        for s in ("synthetic", "random"):
            saved = torch.load(runs / f"{n}-{s}-2024" / "models" / "folds" / "fold_0" / "model.pt", weights_only=True)
            assert (saved["provenance"]["init_weights"] or {}).get("path") == (str(init) if s == "synthetic" else None)
            with open(runs / f"{n}-{s}-2024" / "metrics" / "evaluate_cases.csv") as f:
                rows = {r["case"]: float(r["dice_WT"]) for r in csv.DictReader(f)}
            assert sorted(rows) == result["unseen"]
            assert result["curve"][n][s]["mean"]["dice_WT"] == pytest.approx(np.mean(list(rows.values())), abs=1e-4)
            scored[s] = rows
        change = np.mean([scored["synthetic"][c] - scored["random"][c] for c in result["unseen"]])
        assert result["curve"][n]["synthetic_minus_random"]["dice_WT"]["change"] == pytest.approx(change, abs=1e-4)
    assert (tmp_path / "curve.png").stat().st_size > 0
    # --reuse: the finished runs are kept, not trained again, and score the same
    done = subprocess.run([sys.executable, "bench/finetune.py", "--data", str(tiny_data / "data" / "synthetic"),
                           "--init", str(init), "--sizes", "3", "--test", "2", "--epochs", "1", "--reuse",
                           "--work", str(tmp_path / "work"), "--out", str(out), *overrides],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    again = json.loads(out.read_text())
    assert again["minutes"] == {"3-synthetic-2024": 0.0, "3-random-2024": 0.0}
    assert again["curve"]["3"] == result["curve"]["3"]


@pytest.mark.slow
def test_sim2real_trains_one_model_per_seed_and_pools_them(tmp_path, tiny_data):
    """bench/sim2real.py --seeds: the default pipeline trained per seed (its own synthetic set), each
    model scored on the same labelled cases, and the pooled figures those scores give."""
    from helpers import ADAM, TINY
    cases = tiny_data / "data" / "synthetic"
    overrides = [f"-S{k}={json.dumps(v)}" for k, v in {**TINY, **ADAM, "evaluate.mirror": False,
                                                       "train.val_every": 2}.items()]
    out = tmp_path / "seeds.json"
    # trained two at a time, without the real cases (as on a GPU machine), each evaluated on its synthetic test split
    done = subprocess.run([sys.executable, "bench/sim2real.py", "--train-only", "--seeds", "3", "4", "--jobs", "2",
                           "--work", str(tmp_path / "work"), "--out", str(out), *overrides],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trained = json.loads(out.read_text())
    assert trained["data"] is None and "per_run" not in trained
    assert trained["trained_with"]["3"]["train.epochs"] == TINY["train.epochs"] != yaml.safe_load(
        (ROOT / "params.yaml").read_text())["train"]["epochs"]
    assert "base.seed" not in trained["trained_with"]["3"] and "train.seed" not in trained["trained_with"]["3"]
    test_iou = {s: json.loads((tmp_path / "work" / f"seed-{s}" / "metrics" / "evaluate.json").read_text())["iou"]["WT"]
                for s in (3, 4)}
    assert {s: trained["synthetic_test"]["per_seed"][str(s)]["iou_WT"] for s in (3, 4)} == test_iou
    assert trained["synthetic_test"]["mean"]["iou_WT"] == pytest.approx(np.mean(list(test_iou.values())), abs=1e-4)
    assert not list((tmp_path / "work").rglob("score.json"))
    # then scored on the labelled cases, reusing both models
    done = subprocess.run([sys.executable, "bench/sim2real.py", "--data", str(cases), "--seeds", "3", "4", "--reuse",
                           "--work", str(tmp_path / "work"), "--development", "all", "--cutoffs", "0.7", "0.3",
                           "--out", str(out), *overrides],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["cutoffs"]) == {"WT", "TC", "ET"} and "confirmation" not in result["cutoffs"]["WT"]
    assert result["train_minutes"] == {"3": 0.0, "4": 0.0}
    assert result["synthetic_test"] == trained["synthetic_test"]
    assert result["trained_with"] == trained["trained_with"]     # reused: read from the seeds' params
    names = sorted(p.name for p in cases.iterdir())
    per_seed = {}
    for seed in (3, 4):
        folder = tmp_path / "work" / f"seed-{seed}"
        params = yaml.safe_load((folder / "params.yaml").read_text())
        assert params["base"]["seed"] == seed and params["train"]["seed"] == seed
        scored = json.loads((folder / "score.json").read_text())
        per_seed[seed] = scored["per_case"]
        # each region's Dice at each cut-off, as numpy computes it from the kept probabilities
        from brats import region_mask
        from nifti import read_case
        from editions import find_cases
        case = find_cases(cases, "").cases[0]
        with np.load(folder / "predictions" / f"{case.name}.probs.npz") as f:
            probs, regions = f["probabilities"] / 255.0, [str(r) for r in f["regions"]]
        gt = read_case(case, with_seg=True).seg
        for region in ("WT", "ET"):
            expert = region_mask(gt, region)
            for cut in (0.3, 0.5, 0.7):
                mask = probs[regions.index(region)] > cut
                expected = 1.0 if not (mask.any() or expert.any()) else 2 * (mask & expert).sum() / (mask.sum() + expert.sum())
                assert scored["cutoff_dice"][case.name][region][f"{cut:g}"] == pytest.approx(expected, abs=1e-4)
        assert sorted(per_seed[seed]) == names
        assert result["per_run"][str(seed)]["dice_WT"] == pytest.approx(
            np.mean([per_seed[seed][c]["dice_WT"] for c in names]), abs=1e-4)
    # each seed drew its own synthetic set
    first = [sorted((tmp_path / "work" / f"seed-{s}" / "data" / "synthetic").rglob("*-t1c.nii.gz"))[0] for s in (3, 4)]
    assert first[0].read_bytes() != first[1].read_bytes()
    wt = [np.mean([per_seed[s][c]["dice_WT"] for s in (3, 4)]) for c in names]
    assert result["pooled"]["mean"]["dice_WT"] == pytest.approx(np.mean(wt), abs=1e-4)
    assert result["split"]["development"]["mean"]["dice_WT"] == pytest.approx(np.mean(wt), abs=1e-4)
    assert result["split"]["confirmation"] is None


@pytest.mark.parametrize("args, message", [
    (["--seeds", "1", "--work", "W"], "--data is needed (a folder of real cases with labels), except with --seeds ... --train-only"),
    (["--train-only", "--data", "D"], "--train-only needs --seeds"),
    (["--train-only", "--seeds", "1", "--work", "W", "--jobs", "0"], "--jobs 0: give 1 or more"),
])
def test_sim2real_bad_arguments_are_one_line(tmp_path, args, message):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "sim2real.py"), *args], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(message)
    assert not (tmp_path / "W").exists()


def test_sim2real_cutoff_is_chosen_on_development_institutions_and_judged_on_the_rest():
    """Two seeds, two development cases (2013) where 0.7 is best, two others where it is not: 0.7 is
    chosen, and its change on the others is the seed-averaged per-case difference, by hand."""
    sim2real = bench_module("sim2real")

    def case(at_03, at_05, at_07):
        return {r: {"0.3": at_03, "0.5": at_05, "0.7": at_07} for r in ("WT", "TC", "ET")}
    runs = {"1": {"Brats18_2013_1_1": case(0.5, 0.6, 0.8), "Brats18_2013_2_1": case(0.4, 0.6, 0.7),
                  "Brats18_CBICA_AAA_1": case(0.3, 0.6, 0.5), "Brats18_TCIA10_1_1": case(0.9, 0.9, 0.9)},
            "2": {"Brats18_2013_1_1": case(0.5, 0.7, 0.7), "Brats18_2013_2_1": case(0.5, 0.5, 0.9),
                  "Brats18_CBICA_AAA_1": case(0.3, 0.4, 0.3), "Brats18_TCIA10_1_1": case(0.8, 0.7, 0.8)}}
    chosen = sim2real.choose_cutoffs(runs, ["2013"])["WT"]
    assert chosen["chosen"] == 0.7
    assert chosen["development_dice"] == {"0.3": 0.475, "0.5": 0.6, "0.7": 0.775}
    assert chosen["each_seed_would_choose"] == {"1": 0.7, "2": 0.7}
    confirmation = chosen["confirmation"]
    # CBICA: (0.5+0.3)/2 - (0.6+0.4)/2 = -0.1; TCIA10: (0.9+0.8)/2 - (0.9+0.7)/2 = +0.05
    assert confirmation["cases"] == 2 and confirmation["change"] == pytest.approx(-0.025)
    assert confirmation["at_0.5"] == pytest.approx(0.65) and confirmation["at_chosen"] == pytest.approx(0.625)
    assert confirmation["institutions"] == {"CBICA": {"cases": 1, "at_0.5": 0.5, "at_chosen": 0.4},
                                            "TCIA10": {"cases": 1, "at_0.5": 0.8, "at_chosen": 0.85}}
    # each institution out in turn: chosen on the other two (2013 out: 0.5 from CBICA and TCIA10's
    # 0.575 / 0.65 / 0.625; CBICA out or TCIA10 out: 0.7), each case judged at its own institution's
    held_out = chosen["institution_out"]
    assert held_out["chosen"] == {"2013": 0.5, "CBICA": 0.7, "TCIA10": 0.7}
    # 2013 unchanged, CBICA -0.1, TCIA10 +0.05: (0 + 0 - 0.1 + 0.05) / 4
    assert held_out["cases"] == 4 and held_out["change"] == pytest.approx(-0.0125)
    assert held_out["at_0.5"] == pytest.approx(0.625) and held_out["at_chosen"] == pytest.approx(0.6125)
    assert held_out["institutions"]["2013"] == {"cases": 2, "at_0.5": 0.6, "at_chosen": 0.6}
    assert held_out["institutions"]["TCIA10"] == {"cases": 1, "at_0.5": 0.8, "at_chosen": 0.85}
    # a tie goes to the cut-off nearest 0.5
    tied = {"1": {"Brats18_2013_1_1": case(0.7, 0.7, 0.7)}}
    assert sim2real.choose_cutoffs(tied, ["2013"])["ET"]["chosen"] == 0.5


@pytest.mark.parametrize("args, message", [
    (["--data", "D", "--seeds", "1", "--work", "W", "--cutoffs", "0.7"],
     "--cutoffs needs --seeds and --development (the cut-off is chosen on the development institutions), "
     "and scoring (not --train-only)"),
    (["--data", "D", "--seeds", "1", "--work", "W", "--development", "2013", "--cutoffs", "0.7", "1.5", "0"],
     "--cutoffs 1.5 0: give probabilities between 0 and 1"),
])
def test_sim2real_bad_cutoffs_are_one_line(tmp_path, args, message):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "sim2real.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(message)
    assert not (tmp_path / "W").exists()


def test_sim2real_seeds_refuse_a_development_institution_the_cases_lack(tmp_path, small_case):
    """Checked before any training: one line naming the institution and the ones the cases have."""
    from helpers import write_case
    images, labels, affine = small_case
    write_case(tmp_path / "real", "Brats18_CBICA_AAA_1", images, labels, affine)
    done = subprocess.run([sys.executable, "bench/sim2real.py", "--data", str(tmp_path / "real"), "--seeds", "1",
                           "--work", str(tmp_path / "work"), "--development", "CBICA", "TCIA99"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(
        f"--development TCIA99: no case of {tmp_path / 'real'} comes from it; its institutions: CBICA")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("spec", ["bad name: -S train.epochs=2", "nocolon", "a: -S train.epochs=2\na: -S train.epochs=3"])
def test_gpu_script_refuses_a_bad_run_list_before_any_work(tmp_path, spec):
    """bench/gpu.sh's SEEDS_RUNS: one line naming the bad line and the form, exit 2, nothing written."""
    env = {**os.environ, "PARTS": "seeds", "SEEDS_RUNS": spec}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), str(tmp_path / "out")], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: SEEDS_RUNS line '{spec.splitlines()[-1]}': write one run a line as 'name: -S key=value ...', "
        "each name once (letters, digits, _ and -)"]
    assert not (tmp_path / "out").exists()


GATE_CASES = ["BraTS-GLI-00001-100", "BraTS-GLI-00002-100"]


def gate_run(tmp_path, bright_false_et: bool = False):
    """Two cases of two patients (two folds), stored as bench/real.py leaves them: the expert's
    enhancing wall (16 voxels) is 2 on the T1c of the network input, the rest -0.5 (or 2 on the oedema
    the probabilities call enhancing too, with `bright_false_et`); the kept probabilities find the
    wall and as many voxels again of oedema. Returns the work folder, the labels and that false ET."""
    from brats import MODALITIES
    from layout import case_folder, write_case
    oof = bench_module("oof")
    work = tmp_path / "work"
    pre = work / "data" / "preprocessed"
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[2:10, 2:10, 2:10] = 2                     # oedema
    labels[4:8, 4:8, 4:8] = 1                        # necrosis
    labels[4:8, 4:8, 4] = 3                          # an enhancing wall: 16 voxels
    false_et = np.zeros_like(labels, bool)
    false_et[2, 2:10, 2:4] = True                    # 16 voxels of oedema
    image = np.zeros((4, 12, 12, 12), np.float32)
    image[MODALITIES.index("t1c")] = -0.5
    image[MODALITIES.index("t1c")][(labels == 3) | (false_et & bright_false_et)] = 2.0
    probs = np.stack([(labels > 0) * 0.9, np.isin(labels, (1, 3)) * 0.9, ((labels == 3) | false_et) * 0.9,
                      np.zeros(labels.shape)]).astype(np.float32)
    for name in GATE_CASES:
        write_case(case_folder(pre, name), image.astype(np.float16), labels)
        oof.save_case(work / "probabilities" / f"{name}.npz", probs, ["WT", "TC", "ET", "RC"], labels, (1.0,) * 3)
    (pre / "manifest.json").write_text(json.dumps({"cases": {n: {"patient": n[:15]} for n in GATE_CASES}}))
    (work / "folds.json").write_text(json.dumps([[n[:15]] for n in GATE_CASES]))
    return work, labels, false_et


def run_gate(work, out, *extra):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "et_gate.py"), "--work", str(work), "--out", str(out),
                           "--gates", "0", "0.5", "3", *extra], capture_output=True, text=True)


def test_t1c_gate_chosen_on_the_other_folds_and_scored_by_hand(tmp_path):
    """No gate: ET Dice 2a/(2a+a) = 2/3; a gate at 0 or 0.5 removes the oedema's and gives 1, one at 3
    removes all (0); each fold's choice, made on the other case, is the lowest gate that gives 1, 0."""
    work, _, _ = gate_run(tmp_path)
    out = tmp_path / "gate.json"
    done = run_gate(work, out)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    for name in GATE_CASES:
        scores = result["per_case"][name]
        assert scores["none"]["dice_ET"] == round(2 / 3, 4)
        assert scores["0.0"]["dice_ET"] == scores["0.5"]["dice_ET"] == 1.0
        assert scores["3.0"]["dice_ET"] == 0.0
    assert result["chosen_per_fold"] == {"0": "0.0", "1": "0.0"}
    assert result["summary"]["chosen out of fold"]["dice_ET"]["mean"] == 1.0
    assert result["summary"]["0.0"]["dice_ET"]["change"] == round(1 - 2 / 3, 4)
    assert "native vs network" not in result["summary"]


def write_raw_gate_cases(folder, labels, t1c):
    """The raw scans of GATE_CASES at 1 mm: every modality 1 in the whole grid (the head fills it, so
    the crop is the kept probabilities' grid), the T1c given."""
    from brats import MODALITIES
    from helpers import write_case as write_raw
    images = np.ones((4, *labels.shape), np.float32)
    images[MODALITIES.index("t1c")] = t1c
    for name in GATE_CASES:
        write_raw(folder, name, images, labels, np.eye(4))


def test_t1c_gate_on_the_native_grid_scored_by_hand(tmp_path):
    """The network's input calls the false enhancing oedema bright (2), so a gate there keeps it (ET
    Dice 2/3 at 0 and 0.5, 0 at 3); the raw T1c is 10 on the expert's wall and 1 elsewhere, whose
    z-scores in the head are (10 - m)/sd = 10.3 and (1 - m)/sd = -0.10 (m = 1 + 9·16/1728, sd =
    9·sqrt(p(1 - p)), p = 16/1728): the native gate keeps the wall alone at 0, 0.5 and 3 (Dice 1),
    +1/3 over the network's grid at 0 and 0.5 and +1 at 3."""
    work, labels, _ = gate_run(tmp_path, bright_false_et=True)
    write_raw_gate_cases(tmp_path / "raw", labels, np.where(labels == 3, 10.0, 1.0))
    out = tmp_path / "gate.json"
    done = run_gate(work, out, "--native", str(tmp_path / "raw"))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    for name in GATE_CASES:
        scores = result["per_case"][name]
        assert scores["0.0"]["dice_ET"] == scores["0.5"]["dice_ET"] == round(2 / 3, 4)
        assert scores["3.0"]["dice_ET"] == 0.0
        assert scores["native 0.0"]["dice_ET"] == scores["native 0.5"]["dice_ET"] == scores["native 3.0"]["dice_ET"] == 1.0
    versus = result["summary"]["native vs network"]
    assert versus["0.0"]["dice_ET"]["change"] == versus["0.5"]["dice_ET"]["change"] == round(1 - 2 / 3, 4)
    assert versus["3.0"]["dice_ET"]["change"] == 1.0
    assert result["chosen_per_fold"] == {"0": "none", "1": "none"}      # the network grid's gates only


def test_t1c_gate_on_the_native_grid_refuses_another_folder(tmp_path):
    """A --native folder without the run's cases, or whose scans crop to another grid: one line naming
    the case and the option, nothing written."""
    work, labels, _ = gate_run(tmp_path)
    out = tmp_path / "gate.json"
    write_raw_gate_cases(tmp_path / "raw", labels, np.where(labels == 3, 10.0, 1.0))
    (tmp_path / "other").mkdir()
    (tmp_path / "raw" / GATE_CASES[1]).rename(tmp_path / "other" / GATE_CASES[1])
    done = run_gate(work, out, "--native", str(tmp_path / "raw"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"1 kept case(s) are not in {tmp_path / 'raw'} ({GATE_CASES[1]})" in done.stderr
    small = np.pad(labels[1:, 1:, 1:], ((0, 1), (0, 1), (0, 1)))          # same file size, another head crop
    from helpers import write_case as write_raw
    from brats import MODALITIES
    images = np.ones((4, *labels.shape), np.float32)
    images[:, -1] = 0.0                                                    # one slab outside the head
    for name in GATE_CASES:
        write_raw(tmp_path / "cropped", name, images, small, np.eye(4))
    done = run_gate(work, out, "--native", str(tmp_path / "cropped"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "its kept probabilities 12×12×12: --native must be the folder the bench/real.py run read" in done.stderr
    assert not out.exists()


def test_t1c_gate_refuses_a_folder_that_is_not_a_finished_run(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "et_gate.py"), "--work", str(tmp_path),
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True)
    assert done.returncode == 1
    assert "bench/real.py work folder" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x.json").exists()
