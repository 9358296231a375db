"""The SOFA head model reads a measured HRTF, picks the nearest direction and fails clearly."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from binaural_lab.config import parse
from binaural_lab.data.simulate import BinauralSceneConfig, synthesize_binaural
from binaural_lab.data.simulate.acoustics import room_impulse_response
from binaural_lab.data.simulate.geometry import Pose, Room, unit_vector
from binaural_lab.data.simulate.heads import SofaFileError, load_sofa

FILE_RATE = 44100
FILE_ITD_SAMPLES = 26  # about 0.59 ms at 44.1 kHz, for a source at +-90 deg


def _write_sofa(path: Path, *, receivers: int = 2, with_ir: bool = True) -> None:
    """A tiny SOFA-like HRTF: 24 horizontal directions, each ear an impulse with an ITD and an ILD."""
    azimuths = np.arange(0, 360, 15, dtype=float)
    s = np.sin(np.radians(azimuths))
    hrir = np.zeros((len(azimuths), receivers, 96))
    for m, lateral in enumerate(s):
        hrir[m, 0, 40 - round(FILE_ITD_SAMPLES / 2 * lateral)] = 1 + 0.5 * lateral
        hrir[m, 1, 40 + round(FILE_ITD_SAMPLES / 2 * lateral)] = 1 - 0.5 * lateral
    with h5py.File(path, "w") as f:
        if with_ir:
            f["Data.IR"] = hrir
        f["Data.SamplingRate"] = np.array([float(FILE_RATE)])
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
    text = tmp_path / "text.sofa"
    text.write_text("not hdf5")
    with pytest.raises(SofaFileError, match="text.sofa: not a readable SOFA"):
        load_sofa(str(text))
