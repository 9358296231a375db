"""Image-source method for shoebox rooms and frequency-domain binaural impulse responses.

Images (Allen & Berkley 1979): along each axis of length L an image of coordinate s sits at
``(1 - 2p) s + 2 m L`` for integers m and p in {0, 1}; the path bounces ``|m - p|`` times off the
surface at 0 and ``|m|`` times off the surface at L. Images with at most ``max_order`` bounces in
total are kept. Each carries the product of the pressure reflection factors sqrt(1 - absorption)
of the surfaces it bounced off, and 1/r spherical spreading.

Impulse responses are built in the frequency domain: every arrival is summed into each ear's
spectrum through the head model (exact fractional delays), then one inverse rFFT gives the IR.
Arrivals later than the IR length are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.fft import next_fast_len

from binaural_lab.data.simulate.config import SPEED_OF_SOUND
from binaural_lab.data.simulate.geometry import Pose, Room
from binaural_lab.data.simulate.heads import FFT_PAD, Arrivals, HeadModel


@dataclass(frozen=True)
class ImageSources:
    """Image sources ``[K, 3]`` (world frame), their reflection products ``[K]``, bounce counts ``[K]``
    and, per axis, +1 or -1 where the image is mirrored an even or odd number of times ``[K, 3]``."""

    position: np.ndarray
    reflection: np.ndarray
    order: np.ndarray
    mirror: np.ndarray


def _axis_images(coord: float, length: float, max_order: int) -> tuple[np.ndarray, ...]:
    """Image coordinates along one axis with bounce counts on its low and high surfaces."""
    m = np.repeat(np.arange(-max_order, max_order + 1), 2)
    p = np.tile([0, 1], 2 * max_order + 1)
    low, high = np.abs(m - p), np.abs(m)
    keep = low + high <= max_order
    sign = 1 - 2 * p[keep]
    return sign * coord + 2 * m[keep] * length, low[keep], high[keep], sign


def image_sources(room: Room, source: np.ndarray, max_order: int) -> ImageSources:
    """All images of ``source`` in ``room`` up to ``max_order`` bounces (order 0 is the source)."""
    axes = [_axis_images(source[i], room.size[i], max_order) for i in range(3)]
    grids = np.meshgrid(*[np.arange(len(a[0])) for a in axes], indexing="ij")
    idx = [g.ravel() for g in grids]
    order = sum(axes[i][1][idx[i]] + axes[i][2][idx[i]] for i in range(3))
    keep = order <= max_order
    idx = [i[keep] for i in idx]
    position = np.stack([axes[i][0][idx[i]] for i in range(3)], axis=1).astype(float)
    beta = room.reflection
    reflection = np.ones(len(position))
    for i in range(3):
        reflection *= beta[2 * i] ** axes[i][1][idx[i]] * beta[2 * i + 1] ** axes[i][2][idx[i]]
    mirror = np.stack([axes[i][3][idx[i]] for i in range(3)], axis=1)
    return ImageSources(position, reflection, order[keep], mirror)


def arrivals_from(points: np.ndarray, gains: np.ndarray, pose: Pose) -> Arrivals:
    """Arrivals at the head from point sources (world frame) with 1/r spreading times ``gains``."""
    offset = pose.to_head(points)
    distance = np.linalg.norm(offset, axis=1)
    return Arrivals(offset / distance[:, None], distance / SPEED_OF_SOUND, gains / distance)


def impulse_response(arrivals: Arrivals, head: HeadModel, sample_rate: int, n_samples: int) -> np.ndarray:
    """Two-ear impulse response ``[2, n_samples]`` of the arrivals through ``head``."""
    arrivals = arrivals.select(arrivals.delay * sample_rate < n_samples)
    n_fft = next_fast_len(n_samples + FFT_PAD, real=True)
    spectrum = head.spectrum(arrivals, sample_rate, n_fft)
    return np.fft.irfft(spectrum, n_fft, axis=-1)[:, :n_samples]


def room_impulse_response(
    room: Room, source: np.ndarray, pose: Pose, head: HeadModel, max_order: int, sample_rate: int, n_samples: int
) -> np.ndarray:
    """Binaural room impulse response ``[2, n_samples]`` from ``source`` to the listener at ``pose``."""
    images = image_sources(room, source, max_order)
    return impulse_response(arrivals_from(images.position, images.reflection, pose), head, sample_rate, n_samples)
