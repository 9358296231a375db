"""The SOFA head model reads a measured HRTF, picks the nearest direction, applies its delays relative to
the head centre and fails clearly."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.signal import fftconvolve, hilbert

from binaural_lab.config import parse
from binaural_lab.data.simulate import BinauralSceneConfig, synthesize_binaural
from binaural_lab.data.simulate.acoustics import room_impulse_response
from binaural_lab.data.simulate.config import ChirpConfig
from binaural_lab.data.simulate.echoes import chirp, echo_arrivals, record_echoes
from binaural_lab.data.simulate.geometry import Pose, Room, unit_vector
from binaural_lab.data.simulate.heads import SofaFileError, SofaHead, load_sofa

FILE_RATE = 44100
FILE_ITD_SAMPLES = 26  # about 0.59 ms at 44.1 kHz, for a source at +-90 deg
BULK = 40  # samples before every response (loudspeaker distance, latency): no part of the head
SR = 44100
C = 343.0


def _write_sofa(
    path: Path, *, receivers: int = 2, with_ir: bool = True, min_phase: bool = False, delay: np.ndarray | None = None
) -> None:
    """A tiny SOFA-like HRTF: 24 horizontal directions, each ear with an ITD and an ILD.

    By default each ear is an impulse at BULK -+ FILE_ITD_SAMPLES / 2 * sin(azimuth) samples (the left
    ear leads for a source on the left). With ``min_phase`` each ear is a decaying exponential from
    its first sample (minimum phase) and those delays go to ``Data.Delay [M, 2]`` instead.
    ``delay`` is written as ``Data.Delay`` as it is.
    """
    azimuths = np.arange(0, 360, 15, dtype=float)
    s = np.sin(np.radians(azimuths))
    hrir = np.zeros((len(azimuths), receivers, 96))
    for m, lateral in enumerate(s):
        if min_phase:
            hrir[m, :2] = np.outer([1 + 0.5 * lateral, 1 - 0.5 * lateral], 0.4 ** np.arange(96))
        else:
            hrir[m, 0, BULK - round(FILE_ITD_SAMPLES / 2 * lateral)] = 1 + 0.5 * lateral
            hrir[m, 1, BULK + round(FILE_ITD_SAMPLES / 2 * lateral)] = 1 - 0.5 * lateral
    if min_phase:
        delay = BULK + FILE_ITD_SAMPLES / 2 * np.stack([-s, s], axis=1)
    with h5py.File(path, "w") as f:
        if with_ir:
            f["Data.IR"] = hrir
        f["Data.SamplingRate"] = np.array([float(FILE_RATE)])
        if delay is not None:
            f["Data.Delay"] = delay
        positions = f.create_dataset("SourcePosition", data=np.stack([azimuths, 0 * s, 1 + 0 * s], axis=1))
        positions.attrs["Type"] = b"spherical"


def _lag_ms(left: np.ndarray, right: np.ndarray, sample_rate: int, upsample: int = 16) -> float:
    """Delay of the right channel behind the left (ms) at the cross-correlation peak."""
    n = 1 << (2 * len(left) - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(right, n) * np.conj(np.fft.rfft(left, n)), n * upsample)
    lags = np.arange(-sample_rate // 500 * upsample, sample_rate // 500 * upsample)
    return float(lags[np.argmax(corr[lags])] / upsample / sample_rate * 1000)


@pytest.fixture
def sofa_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.sofa"
    _write_sofa(path)
    return path


def test_sofa_head_uses_the_nearest_measured_direction(sofa_file: Path) -> None:
    head = load_sofa(str(sofa_file))
    assert head.nearest(unit_vector(np.radians([62.0, -31.0, 178.0]), np.zeros(3))).tolist() == [4, 22, 12]
    room = Room(np.array([100.0, 100.0, 100.0]), np.full(6, 0.5))
    pose = Pose(np.array([50.0, 50.0, 50.0]), yaw=-1.0)
    sample_rate = 22050  # the file is at 44.1 kHz: resampled
    for azimuth in (-90.0, 62.0):
        source = pose.position + 3.0 * pose.to_world(unit_vector(math.radians(azimuth), 0.0))
        ir = room_impulse_response(room, source, pose, head, 0, sample_rate, 2048)
        lateral = math.sin(math.radians(15 * round(azimuth / 15)))
        expected_ms = FILE_ITD_SAMPLES * lateral / FILE_RATE * 1000
        assert _lag_ms(ir[0], ir[1], sample_rate) == pytest.approx(expected_ms, abs=0.05)
        level_db = 20 * np.log10(np.sqrt(np.sum(ir[0] ** 2) / np.sum(ir[1] ** 2)))
        assert level_db == pytest.approx(20 * np.log10((1 + 0.5 * lateral) / (1 - 0.5 * lateral)), abs=0.5)


def _free_field(head: SofaHead, azimuth_deg: float, sample_rate: int, distance: float = 3.0) -> np.ndarray:
    """Two-ear impulse response ``[2, 2048]`` of a point source at ``azimuth_deg`` (direct path only)."""
    room = Room(np.array([100.0, 100.0, 100.0]), np.full(6, 0.5))
    pose = Pose(np.array([50.0, 50.0, 50.0]), yaw=0.4)
    source = pose.position + distance * pose.to_world(unit_vector(math.radians(azimuth_deg), 0.0))
    return room_impulse_response(room, source, pose, head, 0, sample_rate, 2048)


def test_the_itd_stored_in_data_delay_survives(tmp_path: Path) -> None:
    # Minimum-phase HRIRs are identical in time at both ears: only Data.Delay carries the ITD.
    path = tmp_path / "min_phase.sofa"
    _write_sofa(path, min_phase=True)
    head = load_sofa(str(path))
    sample_rate = 22050  # resampled from 44.1 kHz; Data.Delay is in samples of the file's rate
    for azimuth in (60.0, -60.0, 90.0):
        ir = _free_field(head, azimuth, sample_rate)
        lateral = math.sin(math.radians(azimuth))
        lag = _lag_ms(ir[0], ir[1], sample_rate)  # > 0: the right ear lags, the left ear leads
        assert lag == pytest.approx(FILE_ITD_SAMPLES * lateral / FILE_RATE * 1000, abs=0.05)
        assert (lag > 0) == (azimuth > 0)
        assert (np.sum(ir[0] ** 2) > np.sum(ir[1] ** 2)) == (azimuth > 0)


def _matched_filter_peak(signal: np.ndarray, probe: np.ndarray, expected: float, window: int) -> float:
    """Delay (samples) of the probe's strongest copy near ``expected``: envelope of the matched filter."""
    envelope = np.abs(hilbert(fftconvolve(signal, probe[::-1])))[len(probe) - 1 :]
    lo = int(expected) - window
    return float(lo + np.argmax(envelope[lo : int(expected) + window + 1]))


@pytest.mark.parametrize("min_phase", [True, False], ids=["itd-in-data-delay", "itd-in-ir"])
def test_wall_echoes_through_a_sofa_head_arrive_at_the_round_trip_time(tmp_path: Path, min_phase: bool) -> None:
    # The 40-sample bulk delay of the responses is removed: an echo from straight ahead or behind
    # reaches both ears at 2 d / c; one from the side reaches the near ear half the file's ITD
    # earlier and the far ear half of it later. Listener facing +x in a 6 x 8 x 3 m room: walls at
    # 1.5 m behind, 4.5 m ahead, 3.0 m right (azimuth -90) and 5.0 m left (+90), all measured directions.
    path = tmp_path / "head.sofa"
    _write_sofa(path, min_phase=min_phase)
    head = load_sofa(str(path))
    room = Room(np.array([6.0, 8.0, 3.0]), np.full(6, 0.3))
    pose = Pose(np.array([1.5, 3.0, 1.2]), yaw=0.0)
    probe = chirp(ChirpConfig(), SR)
    ears = record_echoes(echo_arrivals(room, pose, [], np.array([]), 0.0, 1), head, probe, SR, int(0.04 * SR))
    half_itd = FILE_ITD_SAMPLES / 2 * FILE_RATE / SR
    for name, distance, lateral in (("x0", 1.5, 0), ("x1", 4.5, 0), ("y0", 3.0, -1), ("y1", 5.0, 1)):
        for ear, sign in ((0, -1), (1, 1)):
            expected = 2 * distance / C * SR + sign * lateral * half_itd
            found = _matched_filter_peak(ears[ear], probe, expected, window=int(0.0005 * SR))
            assert abs(found - expected) <= 2.0, (name, ear, found, expected)


def test_a_single_row_of_data_delay_applies_to_every_measurement(tmp_path: Path) -> None:
    # Data.Delay [1, 2]: the right receiver 10 samples later than the left for every direction, on
    # top of the ITD in the IRs. The common frontal onset (BULK + 5 samples) is removed.
    path = tmp_path / "shared_delay.sofa"
    _write_sofa(path, delay=np.array([[0.0, 10.0]]))
    head = load_sofa(str(path))
    for azimuth in (0.0, 45.0, -90.0):
        ir = _free_field(head, azimuth, SR)
        itd_samples = 2 * round(FILE_ITD_SAMPLES / 2 * math.sin(math.radians(azimuth))) + 10
        assert _lag_ms(ir[0], ir[1], SR) == pytest.approx(itd_samples / SR * 1000, abs=0.01)
    front = _free_field(head, 0.0, SR)
    assert np.argmax(np.abs(front), axis=1).tolist() == [round(3.0 / C * SR) - 5, round(3.0 / C * SR) + 5]


def test_binaural_scenes_render_through_a_sofa_head(sofa_file: Path, tmp_path: Path) -> None:
    data = {
        "n_rooms": 1,
        "scenes_per_room": 1,
        "clip_seconds": 0.1,
        "ir_seconds": 0.05,
        "camera": {"width": 16, "height": 12},
        "head": {"model": "sofa", "sofa_path": str(sofa_file)},
    }
    table = synthesize_binaural(parse(BinauralSceneConfig, data, "simulate_binaural"), tmp_path / "out", 0, 1)
    assert (tmp_path / "out" / table.iloc[0]["binaural_path"]).is_file()


def test_missing_or_malformed_sofa_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.sofa"
    with pytest.raises(SofaFileError, match="nowhere.sofa: SOFA file not found"):
        load_sofa(str(missing))
    cfg = parse(BinauralSceneConfig, {"head": {"model": "sofa", "sofa_path": str(missing)}}, "simulate_binaural")
    with pytest.raises(SofaFileError, match="nowhere.sofa"):
        synthesize_binaural(cfg, tmp_path / "out", 0, 1)
    assert not (tmp_path / "out").exists()

    no_ir = tmp_path / "no_ir.sofa"
    _write_sofa(no_ir, with_ir=False)
    with pytest.raises(SofaFileError, match=r"no_ir.sofa: .*Data.IR"):
        load_sofa(str(no_ir))
    three = tmp_path / "three.sofa"
    _write_sofa(three, receivers=3)
    with pytest.raises(SofaFileError, match=r"three.sofa: Data.IR must be \[M, 2, N\]"):
        load_sofa(str(three))
    bad_delay = tmp_path / "bad_delay.sofa"
    _write_sofa(bad_delay, delay=np.zeros((3, 2)))
    with pytest.raises(SofaFileError, match=r"bad_delay.sofa: Data.Delay must be finite, \[1, 2\] or \[24, 2\]"):
        load_sofa(str(bad_delay))
    text = tmp_path / "text.sofa"
    text.write_text("not hdf5")
    with pytest.raises(SofaFileError, match="text.sofa: not a readable SOFA"):
        load_sofa(str(text))
