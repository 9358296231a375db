"""Head models: how one plane-wave arrival reaches the two ears, in the frequency domain.

Directions are unit vectors in the head frame (x forward, y left, z up; see ``geometry``). Ear 0 is
the LEFT ear at ``+a`` on the y axis, ear 1 the RIGHT ear at ``-a``.

``spherical``: a rigid sphere of radius ``a``. Let psi be the angle between the arrival direction
and an ear's outward axis. The ear hears the arrival with the Woodworth delay relative to the head
centre, ``-(a/c) cos(psi)`` for psi < 90 deg and ``(a/c)(psi - pi/2)`` behind the head, and through the
one-pole/one-zero head-shadow filter of Brown & Duda (1998)::

    H(w, psi) = (1 + j alpha(psi) w / (2 w0)) / (1 + j w / (2 w0)),   w0 = c / a
    alpha(psi) = (1 + amin/2) + (1 - amin/2) cos(psi / psi_min * pi),  amin = 0.1, psi_min = 150 deg

``sofa``: a measured HRTF read from a SOFA file (HDF5 / netCDF-4): ``Data.IR [M, 2, N]``,
``Data.SamplingRate``, ``SourcePosition [M, 3]`` (azimuth and elevation in degrees, azimuth
positive to the left as in our head frame, or cartesian when its ``Type`` attribute says so) and,
optionally, ``Data.Delay`` (``[1, 2]`` for all measurements or ``[M, 2]`` for each, in samples at
``Data.SamplingRate``; zero when absent). Each arrival uses the HRIR of the nearest measured
direction (largest cosine), resampled to the scene rate, and keeps its path delay and 1/r gain.

Per SOFA, ear r of measurement m is ``Data.IR[m, r]`` delayed by ``Data.Delay[m, r]``: files that
store minimum-phase HRIRs keep their ITD there, so it is applied (as an exact, possibly fractional,
phase term). A measured response also starts with a bulk delay (loudspeaker distance, converter
latency) that is no part of the head. It is removed so that, as for the spherical head, delays are
relative to the head centre: the common onset is the mean over the two ears of the onset of the
measurement nearest to straight ahead (a frontal wave reaches both ears when it reaches the head
centre), where an onset is ``Data.Delay`` plus the first sample at which ``|IR|`` reaches
:data:`ONSET_THRESHOLD` of its peak. One constant is removed from every measurement and ear, so each
direction's interaural time difference is kept, and an echo from straight ahead arrives at 2d/c. The
near ear of a lateral source then leads the head centre (a negative delay, exact in the frequency
domain). The samples before an onset now come before the path delay; for a path shorter than the
removed bulk they would fall before time 0 and are dropped, and they are below the onset threshold.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy.signal import resample_poly

from binaural_lab.audio.io import AudioFileError
from binaural_lab.data.simulate.config import SPEED_OF_SOUND, HeadConfig
from binaural_lab.data.simulate.geometry import unit_vector

# Zero padding after an impulse response, so that the sinc tails of late arrivals and the HRIR of
# a measured head do not wrap around onto its start; also the longest HRIR accepted (in samples).
FFT_PAD = 1024
EAR_AXES = np.array([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
ALPHA_MIN = 0.1
PSI_MIN = math.radians(150.0)
# An HRIR's onset: the first sample whose magnitude reaches this fraction of its peak (-20 dB).
ONSET_THRESHOLD = 0.1


class SofaFileError(AudioFileError):
    """A SOFA file is missing, unreadable or not laid out as expected."""


@dataclass(frozen=True)
class Arrivals:
    """Plane-wave arrivals at the head: unit directions ``[K, 3]`` (head frame), delays at the head
    centre ``[K]`` in seconds and linear gains ``[K]``."""

    direction: np.ndarray
    delay: np.ndarray
    gain: np.ndarray

    def select(self, keep: np.ndarray) -> Arrivals:
        """The arrivals where ``keep`` is true."""
        return Arrivals(self.direction[keep], self.delay[keep], self.gain[keep])

    @staticmethod
    def concat(parts: list[Arrivals]) -> Arrivals:
        """All arrivals of ``parts`` in one set."""
        return Arrivals(
            np.concatenate([p.direction.reshape(-1, 3) for p in parts]),
            np.concatenate([p.delay for p in parts]),
            np.concatenate([p.gain for p in parts]),
        )


class HeadModel(Protocol):
    """Sums arrivals into the two ears' transfer functions on the rfft grid of ``n_fft`` points."""

    def spectrum(self, arrivals: Arrivals, sample_rate: int, n_fft: int) -> np.ndarray:
        """Complex ``[2, n_fft // 2 + 1]`` (left, right)."""
        ...


def delayed_sums(delay: np.ndarray, weights: np.ndarray, sample_rate: int, n_fft: int) -> np.ndarray:
    """``S[f, w] = sum_k weights[k, w] exp(-j 2 pi f delay[k])`` on the rfft grid, ``[F, W]``.

    Bin b is split as ``b = B q + r`` with B ~ sqrt(F), so ``z^b = z^(B q) z^r`` for each arrival's
    phasor z: two small exact tables and one matrix product per column of ``weights`` replace the
    F x K complex exponentials.
    """
    n_bins = n_fft // 2 + 1
    block = math.isqrt(n_bins - 1) + 1
    n_blocks = -(-n_bins // block)
    turns_per_bin = delay * (sample_rate / n_fft)

    def table(bins: np.ndarray) -> np.ndarray:
        turns = np.multiply.outer(bins, turns_per_bin)
        return np.exp(-2j * np.pi * (turns - np.round(turns)))

    coarse, fine = table(np.arange(n_blocks) * block), table(np.arange(block))
    sums = [((coarse * w) @ fine.T).ravel()[:n_bins] for w in np.asarray(weights).T]
    return np.stack(sums, axis=1)


@dataclass(frozen=True)
class SphericalHead:
    """Rigid spherical head: Woodworth ear delays and the Brown & Duda head-shadow filter."""

    radius: float = 0.0875

    def ear_angles(self, direction: np.ndarray) -> np.ndarray:
        """Angle psi ``[K, 2]`` between each arrival direction and each ear's outward axis."""
        return np.arccos(np.clip(direction @ EAR_AXES.T, -1.0, 1.0))

    def ear_delays(self, direction: np.ndarray) -> np.ndarray:
        """Woodworth delay ``[K, 2]`` of each ear relative to the head centre, in seconds."""
        psi = self.ear_angles(direction)
        scale = self.radius / SPEED_OF_SOUND
        return np.where(psi < np.pi / 2, -scale * np.cos(psi), scale * (psi - np.pi / 2))

    def spectrum(self, arrivals: Arrivals, sample_rate: int, n_fft: int) -> np.ndarray:
        """Sum of ``gain * shadow(w, psi) * exp(-j w tau_ear)`` over arrivals, per ear."""
        psi = self.ear_angles(arrivals.direction)
        alpha = (1 + ALPHA_MIN / 2) + (1 - ALPHA_MIN / 2) * np.cos(psi / PSI_MIN * np.pi)
        delays = arrivals.delay[:, None] + self.ear_delays(arrivals.direction)
        omega = 2 * np.pi * np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
        x = omega / (2 * SPEED_OF_SOUND / self.radius)
        # (1 + j alpha x) / (1 + j x) = 1 / (1 + j x) + alpha * j x / (1 + j x): linear in alpha.
        flat, shelf = 1 / (1 + 1j * x), 1j * x / (1 + 1j * x)
        out = np.empty((2, len(omega)), dtype=np.complex128)
        for ear in range(2):
            weights = np.stack([arrivals.gain, arrivals.gain * alpha[:, ear]], axis=1)
            summed = delayed_sums(delays[:, ear], weights, sample_rate, n_fft)
            out[ear] = flat * summed[:, 0] + shelf * summed[:, 1]
        return out


class SofaHead:
    """Measured HRTF: the nearest measured direction's HRIR for every arrival, with its ear delays."""

    def __init__(
        self, path: Path, hrir: np.ndarray, sample_rate: int, directions: np.ndarray, delay: np.ndarray
    ) -> None:
        self.path = path
        self.hrir = hrir
        self.sample_rate = sample_rate
        self.directions = directions
        front = self.nearest(unit_vector(0.0, 0.0)[None])[0]
        magnitude = np.abs(hrir[front])
        first = np.argmax(magnitude >= ONSET_THRESHOLD * magnitude.max(axis=-1, keepdims=True), axis=-1)
        common = float(np.mean(delay[front] + first))
        # Seconds by which ear r of measurement m is delayed relative to the head centre.
        self.ear_delay = (delay - common) / sample_rate
        self._spectra: dict[tuple[int, int], np.ndarray] = {}

    def nearest(self, direction: np.ndarray) -> np.ndarray:
        """Index of the nearest measured direction for each unit vector ``[K, 3]``."""
        return np.argmax(direction @ self.directions.T, axis=1)

    def hrtf(self, sample_rate: int, n_fft: int) -> np.ndarray:
        """HRTFs ``[M, 2, F]`` at ``sample_rate`` on the rfft grid of ``n_fft`` (cached)."""
        key = (sample_rate, n_fft)
        if key not in self._spectra:
            hrir = self.hrir
            if sample_rate != self.sample_rate:
                ratio = Fraction(sample_rate, self.sample_rate)
                hrir = resample_poly(hrir, ratio.numerator, ratio.denominator, axis=-1)
            lag = max(0, math.ceil(float(self.ear_delay.max()) * sample_rate))
            if hrir.shape[-1] + lag > FFT_PAD:
                raise SofaFileError(
                    f"{self.path}: HRIRs of {hrir.shape[-1]} samples delayed by up to {lag} at {sample_rate} Hz "
                    f"are longer than the {FFT_PAD} supported"
                )
            freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
            shift = np.exp(-2j * np.pi * self.ear_delay[..., None] * freqs)
            self._spectra[key] = (np.fft.rfft(hrir, n_fft, axis=-1) * shift).astype(np.complex64)
        return self._spectra[key]

    def spectrum(self, arrivals: Arrivals, sample_rate: int, n_fft: int) -> np.ndarray:
        """Sum of ``gain * HRTF_nearest(f) * exp(-j w tau)`` over arrivals, per ear."""
        hrtf = self.hrtf(sample_rate, n_fft)
        used, group = np.unique(self.nearest(arrivals.direction), return_inverse=True)
        membership = np.zeros((len(arrivals.gain), len(used)))
        membership[np.arange(len(arrivals.gain)), group] = arrivals.gain
        per_direction = delayed_sums(arrivals.delay, membership, sample_rate, n_fft)
        return np.einsum("uef,fu->ef", hrtf[used], per_direction)


def _read_sofa(path: Path) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """HRIRs ``[M, 2, N]``, their rate, unit directions ``[M, 3]`` and delays ``[M, 2]`` (samples)."""
    try:
        import h5py
    except ImportError as exc:
        raise SofaFileError(f"{path}: reading SOFA files needs h5py (pip install h5py)") from exc
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("Data.IR", "Data.SamplingRate", "SourcePosition") if k not in f]
            if missing:
                raise SofaFileError(f"{path}: not a SOFA HRTF file, variable(s) {missing} missing")
            hrir = np.asarray(f["Data.IR"], dtype=np.float64)
            rate = float(np.ravel(f["Data.SamplingRate"])[0])
            positions = np.asarray(f["SourcePosition"], dtype=np.float64)
            kind = f["SourcePosition"].attrs.get("Type", b"spherical")
            delay = np.asarray(f["Data.Delay"], dtype=np.float64) if "Data.Delay" in f else np.zeros((1, 2))
    except OSError as exc:
        raise SofaFileError(f"{path}: not a readable SOFA (HDF5) file ({exc})") from exc
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if hrir.ndim != 3 or hrir.shape[1] != 2 or hrir.shape[2] < 1:
        raise SofaFileError(f"{path}: Data.IR must be [M, 2, N] (two receivers), got {list(hrir.shape)}")
    if positions.shape != (hrir.shape[0], 3):
        raise SofaFileError(f"{path}: SourcePosition must be [{hrir.shape[0]}, 3], got {list(positions.shape)}")
    if rate <= 0 or rate != round(rate) or not np.isfinite(hrir).all():
        raise SofaFileError(f"{path}: invalid sampling rate {rate} or non-finite HRIRs")
    if delay.shape not in ((1, 2), (hrir.shape[0], 2)) or not np.isfinite(delay).all():
        raise SofaFileError(
            f"{path}: Data.Delay must be finite, [1, 2] or [{hrir.shape[0]}, 2], got {list(delay.shape)}"
        )
    if kind.lower() == "cartesian":
        directions = positions
    else:
        directions = unit_vector(np.radians(positions[:, 0]), np.radians(positions[:, 1]))
    norms = np.linalg.norm(directions, axis=1, keepdims=True)
    if (norms == 0).any():
        raise SofaFileError(f"{path}: SourcePosition holds a zero direction")
    return hrir, int(rate), directions / norms, np.broadcast_to(delay, (hrir.shape[0], 2)).copy()


@functools.lru_cache(maxsize=4)
def load_sofa(path: str) -> SofaHead:
    """Read (once per process) a SOFA HRTF; :class:`SofaFileError` names the file on any problem."""
    file = Path(path)
    if not file.is_file():
        raise SofaFileError(f"{file}: SOFA file not found")
    return SofaHead(file, *_read_sofa(file))


def make_head(cfg: HeadConfig) -> HeadModel:
    """The head model named by ``cfg``."""
    if cfg.model == "sofa":
        return load_sofa(str(cfg.sofa_path))
    return SphericalHead(cfg.radius_m)
