"""Evaluation metrics; depth metrics in :mod:`binaural_lab.metrics.depth`."""

from binaural_lab.metrics.depth import (
    METRIC_NAMES,
    DepthMetricAccumulator,
    depth_metrics,
    depth_metrics_per_image,
)

__all__ = ["METRIC_NAMES", "DepthMetricAccumulator", "depth_metrics", "depth_metrics_per_image"]
