"""Depth metrics against hand-computed values; masking, skipping, streaming."""

import math

import numpy as np
import pytest
import torch

from binaural_lab.metrics import METRIC_NAMES, DepthMetricAccumulator, depth_metrics, depth_metrics_per_image


def test_metric_names():
    assert METRIC_NAMES == ("abs_rel", "rmse", "delta1", "delta2", "delta3", "log10", "mae")


def test_one_image_by_hand():
    gt = np.array([[[1.0, 2.0], [4.0, 10.0]]])
    pred = np.array([[[1.0, 3.0], [2.0, 10.0]]])
    # errors 0, 1, 2, 0; ratios 1, 1.5, 2, 1
    m = depth_metrics(pred, gt)
    assert m["abs_rel"] == pytest.approx((0 + 1 / 2 + 2 / 4 + 0) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 1 + 4 + 0) / 4))
    assert m["mae"] == pytest.approx(3 / 4)
    assert m["delta1"] == pytest.approx(2 / 4)  # 1.5 and 2 fail 1.25
    assert m["delta2"] == pytest.approx(3 / 4)  # 1.5 < 1.5625 < 2
    assert m["delta3"] == pytest.approx(3 / 4)  # 2 > 1.953
    assert m["log10"] == pytest.approx((0 + math.log10(1.5) + math.log10(2) + 0) / 4)
    assert m["n_images"] == 1 and m["n_skipped"] == 0


def test_invalid_pixels_are_ignored():
    gt = np.array([[[2.0, 0.0, np.nan, np.inf, -1.0]]])
    pred = np.array([[[1.5, 5.0, 7.0, 9.0, 3.0]]])
    m = depth_metrics(pred, gt)
    assert m["mae"] == pytest.approx(0.5) and m["abs_rel"] == pytest.approx(0.25)
    assert m["delta1"] == 0.0 and m["delta2"] == 1.0  # ratio 4/3


def test_images_averaged_not_pixels_and_empty_images_skipped():
    gt = np.zeros((3, 2, 2))
    pred = np.ones((3, 1, 2, 2))
    gt[0] = 2.0  # mae 1 on four pixels
    gt[1, 0, 0] = 4.0  # mae 3 on one pixel
    m = depth_metrics(pred, gt)
    assert m["mae"] == pytest.approx((1 + 3) / 2)
    assert m["n_images"] == 2 and m["n_skipped"] == 1
    per = depth_metrics_per_image(pred, gt)
    assert per["n_valid"].tolist() == [4, 1, 0]
    assert np.isnan(per["rmse"][2]) and per["rmse"][1] == pytest.approx(3.0)


def test_nonpositive_prediction_is_clamped_in_ratio_and_log_only():
    gt = np.array([[[1.0]]])
    m = depth_metrics(np.array([[[-1.0]]]), gt)
    assert m["mae"] == pytest.approx(2.0) and m["abs_rel"] == pytest.approx(2.0)
    assert m["log10"] == pytest.approx(3.0)  # log10(1) - log10(1e-3)
    assert m["delta3"] == 0.0 and all(np.isfinite(list(m.values())))


def test_accumulator_equals_one_shot_and_accepts_tensors():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 10, size=(7, 1, 8, 8))
    gt[gt < 2] = 0
    gt[3] = 0
    pred = gt + rng.normal(0, 1, size=gt.shape)
    once = depth_metrics(pred, gt)
    acc = DepthMetricAccumulator()
    for lo, hi in [(0, 2), (2, 3), (3, 7)]:
        acc.update(torch.from_numpy(pred[lo:hi]).float(), torch.from_numpy(gt[lo:hi]).float())
    streamed = acc.compute()
    assert streamed["n_images"] == 6 and streamed["n_skipped"] == 1
    assert streamed == pytest.approx(once, rel=1e-5)


def test_no_valid_image_gives_nan_and_bad_shapes_fail():
    m = DepthMetricAccumulator().compute()
    assert math.isnan(m["rmse"]) and m["n_images"] == 0
    with pytest.raises(ValueError, match="differ"):
        depth_metrics(np.ones((2, 4, 4)), np.ones((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        depth_metrics(np.ones((4, 4)), np.ones((4, 4)))
