"""The simulated datasets are physical: interaural cues, echo timing, exact depth; and reproducible."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image
from scipy.signal import fftconvolve, hilbert

import binaural_lab.data.simulate.binaural as binaural_scenes
from binaural_lab.config import ParamError, parse
from binaural_lab.data.simulate import BinauralSceneConfig, EchoSceneConfig, synthesize_binaural, synthesize_echoes
from binaural_lab.data.simulate.acoustics import image_sources, room_impulse_response
from binaural_lab.data.simulate.config import ChirpConfig
from binaural_lab.data.simulate.echoes import chirp, depth_map, echo_arrivals, record_echoes
from binaural_lab.data.simulate.geometry import PinholeCamera, Pose, Room, unit_vector
from binaural_lab.data.simulate.heads import SphericalHead
from binaural_lab.data.simulate.layout import Sphere

C = 343.0
A = 0.0875
SR = 44100


def _free_field_ears(azimuth_deg: float, sample_rate: int = SR) -> np.ndarray:
    """White noise from 2 m at ``azimuth_deg`` (ear height), direct path only: ``[2, n]``."""
    room = Room(np.array([100.0, 100.0, 100.0]), np.full(6, 0.5))
    pose = Pose(np.array([50.0, 50.0, 50.0]), yaw=0.7)
    source = pose.position + 2.0 * pose.to_world(unit_vector(math.radians(azimuth_deg), 0.0))
    ir = room_impulse_response(room, source, pose, SphericalHead(A), 0, sample_rate, 1024)
    noise = np.random.default_rng(0).standard_normal(sample_rate // 2)
    return np.stack([fftconvolve(noise, ir[ear]) for ear in range(2)])


def _itd_ms(ears: np.ndarray, sample_rate: int = SR, upsample: int = 32) -> float:
    """Lag of the right ear behind the left (ms) at the cross-correlation peak; > 0: left leads."""
    n = 1 << (2 * ears.shape[1] - 1).bit_length()
    cross = np.fft.rfft(ears[1], n) * np.conj(np.fft.rfft(ears[0], n))
    corr = np.fft.irfft(cross, n * upsample)
    lags = np.arange(-2 * sample_rate // 1000 * upsample, 2 * sample_rate // 1000 * upsample)
    return float(lags[np.argmax(corr[lags])] / upsample / sample_rate * 1000)


def test_image_sources_first_order_mirror_positions() -> None:
    room = Room(np.array([6.0, 5.0, 3.0]), np.array([0.19, 0.36, 0.51, 0.64, 0.75, 0.84]))
    images = image_sources(room, np.array([1.0, 2.0, 0.5]), 1)
    first = {tuple(p): r for p, r in zip(images.position, images.reflection, strict=True)}
    assert len(images.position) == 7
    expected = {
        (-1.0, 2.0, 0.5): 0.9,
        (11.0, 2.0, 0.5): 0.8,
        (1.0, -2.0, 0.5): 0.7,
        (1.0, 8.0, 0.5): 0.6,
        (1.0, 2.0, -0.5): 0.5,
        (1.0, 2.0, 5.5): 0.4,
        (1.0, 2.0, 0.5): 1.0,
    }
    for position, reflection in expected.items():
        assert first[position] == pytest.approx(reflection)
    # Order 2 of a shoebox: 1 + 6 + 18 images.
    assert len(image_sources(room, np.array([1.0, 2.0, 0.5]), 2).position) == 25


def test_itd_sign_grows_with_azimuth_and_matches_head_size() -> None:
    azimuths = [0, 15, 30, 45, 60, 75, 90]
    itds = [_itd_ms(_free_field_ears(az)) for az in azimuths]
    assert abs(itds[0]) < 0.01
    assert all(b > a for a, b in zip(itds, itds[1:], strict=False)), itds
    assert 0.6 <= itds[-1] <= 0.7, itds
    # Woodworth: (a / c) (theta + sin theta) in the horizontal plane.
    assert itds[3] == pytest.approx(A / C * (math.pi / 4 + math.sin(math.pi / 4)) * 1000, abs=0.03)
    for az in (30, 90):  # to the right (negative azimuth) the right ear leads
        assert _itd_ms(_free_field_ears(-az)) == pytest.approx(-_itd_ms(_free_field_ears(az)), abs=1e-3)


def test_near_ear_is_louder_and_ears_equal_in_front() -> None:
    def rms_db(ears: np.ndarray) -> np.ndarray:
        return 10 * np.log10(np.mean(ears**2, axis=1))

    front = rms_db(_free_field_ears(0))
    assert front[0] == pytest.approx(front[1], abs=1e-6)
    for az in (30, 60, 90):
        left_source, right_source = rms_db(_free_field_ears(az)), rms_db(_free_field_ears(-az))
        assert left_source[0] - left_source[1] > 3.0
        assert right_source[1] - right_source[0] > 3.0


def _woodworth_ms(psi: float) -> float:
    """Per-ear delay relative to the head centre for the angle psi to the ear axis."""
    scale = A / C * 1000
    return -scale * math.cos(psi) if psi < math.pi / 2 else scale * (psi - math.pi / 2)


def _matched_filter_peak(signal: np.ndarray, probe: np.ndarray, expected: float, window: int) -> float:
    """Delay (samples) of the probe's strongest copy near ``expected``: envelope of the matched filter."""
    envelope = np.abs(hilbert(fftconvolve(signal, probe[::-1])))[len(probe) - 1 :]
    lo = int(expected) - window
    return float(lo + np.argmax(envelope[lo : int(expected) + window + 1]))


def test_first_order_echoes_arrive_at_the_round_trip_time() -> None:
    # Listener facing +x in a 6 x 8 x 3 m room; surface distances 1.5 (x0, behind), 4.5 (x1, ahead),
    # 3.0 (y0, right), 5.0 (y1, left), 1.2 (floor) and 1.8 m (ceiling): round trips 1.7 ms apart at
    # least, so the six echoes (order 1 only) are well separated.
    room = Room(np.array([6.0, 8.0, 3.0]), np.full(6, 0.3))
    pose = Pose(np.array([1.5, 3.0, 1.2]), yaw=0.0)
    head = SphericalHead(A)
    probe = chirp(ChirpConfig(), SR)
    n = int(0.04 * SR)
    omni = record_echoes(echo_arrivals(room, pose, [], np.array([]), 0.0, 1), head, probe, SR, n)
    # psi to the left ear's axis (+y): 90 deg for the walls ahead/behind, floor and ceiling; the
    # left wall lies on the left ear's axis (psi 0), the right wall opposite it (psi 180 deg).
    surfaces = {
        "x0": (1.5, math.pi / 2, math.pi / 2),
        "x1": (4.5, math.pi / 2, math.pi / 2),
        "y0": (3.0, math.pi, 0.0),
        "y1": (5.0, 0.0, math.pi),
        "floor": (1.2, math.pi / 2, math.pi / 2),
        "ceiling": (1.8, math.pi / 2, math.pi / 2),
    }
    for name, (distance, psi_left, psi_right) in surfaces.items():
        round_trip_ms = 2 * distance / C * 1000
        # The ears sit +-a off the head centre: for the lateral walls the near ear hears the echo
        # earlier and the far ear later than 2 d / c, by the (Woodworth) head delays; for the other
        # surfaces both ears are equidistant and hear it exactly at 2 d / c.
        for ear, psi in ((0, psi_left), (1, psi_right)):
            expected = (round_trip_ms + _woodworth_ms(psi)) * SR / 1000
            found = _matched_filter_peak(omni[ear], probe, expected, window=int(0.0005 * SR))
            assert abs(found - expected) <= 2.0, (name, ear, found, expected)

    # The cardioid emitter faces forward: the echo from behind the head (x0) is silenced, the echo
    # from ahead (x1) keeps its omnidirectional gain, lateral ones get half of it.
    omni_gains = echo_arrivals(room, pose, [], np.array([]), 0.0, 1)
    cardioid = echo_arrivals(room, pose, [], np.array([]), 0.5, 1)
    np.testing.assert_array_equal(omni_gains.direction, cardioid.direction)
    ratio = cardioid.gain / omni_gains.gain
    forward = cardioid.direction[:, 0]
    np.testing.assert_allclose(ratio, (1 + forward) / 2, atol=1e-12)
    assert ratio[forward < -0.99] == pytest.approx([0.0]) and ratio[forward > 0.99] == pytest.approx([1.0])


def test_sphere_echo_arrives_from_its_nearest_point() -> None:
    room = Room(np.array([20.0, 20.0, 20.0]), np.full(6, 0.99))
    pose = Pose(np.array([10.0, 10.0, 10.0]), yaw=0.0)
    sphere = Sphere(np.array([13.0, 10.0, 10.0]), 0.5, 0.0, 0.0, 3.0, np.zeros(2))
    probe = chirp(ChirpConfig(), SR)
    arrivals = echo_arrivals(room, pose, [sphere], np.array([1.0]), 0.5, 0)
    ears = record_echoes(arrivals, SphericalHead(A), probe, SR, int(0.03 * SR))
    expected = 2 * 2.5 / C * SR
    for ear in range(2):
        assert abs(_matched_filter_peak(ears[ear], probe, expected, 40) - expected) <= 2.0
    assert arrivals.gain[0] == pytest.approx(0.5 / (2 * 2.5 * 3.0))


def _reference_depth(room: np.ndarray, pose: Pose, camera: PinholeCamera, sphere: tuple) -> np.ndarray:
    """Pixel-by-pixel depth: nearest positive hit of each pinhole ray on the 6 planes and the sphere."""
    focal = camera.width / 2 / math.tan(camera.fov / 2)
    c, s = math.cos(pose.yaw), math.sin(pose.yaw)
    centre, radius = sphere
    depth = np.zeros((camera.height, camera.width))
    for row in range(camera.height):
        for col in range(camera.width):
            fwd, left, up = focal, -(col + 0.5 - camera.width / 2), -(row + 0.5 - camera.height / 2)
            ray = np.array([c * fwd - s * left, s * fwd + c * left, up])
            ray /= np.linalg.norm(ray)
            hits = []
            for axis in range(3):
                for plane in (0.0, room[axis]):
                    if ray[axis] != 0:
                        t = (plane - pose.position[axis]) / ray[axis]
                        if t > 0:
                            hits.append(t)
            oc = pose.position - centre
            b, q = float(ray @ oc), float(oc @ oc - radius**2)
            if b * b - q >= 0 and -b - math.sqrt(b * b - q) > 0:
                hits.append(-b - math.sqrt(b * b - q))
            depth[row, col] = min(hits)
    return depth


@pytest.mark.parametrize("yaw_deg", [0.0, 120.0])
def test_depth_map_is_the_distance_along_each_ray(yaw_deg: float) -> None:
    room = np.array([6.0, 5.0, 3.0])
    pose = Pose(np.array([2.5, 2.0, 1.5]), yaw=math.radians(yaw_deg))
    camera = PinholeCamera(math.radians(90.0), 33, 25)
    centre = pose.position + 2.0 * pose.to_world(unit_vector(0.0, 0.0))  # 2 m straight ahead
    sphere = Sphere(centre, 0.5, 0.0, 0.0, 2.0, np.array([16.0, 12.0]))
    depth = depth_map(Room(room, np.full(6, 0.5)), pose, [sphere], camera, max_depth=100.0)
    assert depth.dtype == np.float32 and depth.shape == (25, 33)
    assert depth[12, 16] == pytest.approx(1.5, abs=1e-6)  # the odd-sized image's centre ray
    np.testing.assert_allclose(depth, _reference_depth(room, pose, camera, (centre, 0.5)), atol=1e-5)


def test_depth_beyond_max_depth_is_invalid() -> None:
    room = Room(np.array([30.0, 4.0, 3.0]), np.full(6, 0.5))
    pose = Pose(np.array([2.0, 2.0, 1.5]), yaw=0.0)
    camera = PinholeCamera(math.radians(90.0), 32, 24)
    full = depth_map(room, pose, [], camera, max_depth=1e9)
    clipped = depth_map(room, pose, [], camera, max_depth=10.0)
    far = full > 10.0
    assert far.any() and (~far).any()
    assert np.all(clipped[far] == 0) and np.array_equal(clipped[~far], full[~far])


def _tiny_binaural(**overrides: object) -> BinauralSceneConfig:
    data = {
        "n_rooms": 2,
        "scenes_per_room": 2,
        "clip_seconds": 0.1,
        "ir_seconds": 0.05,
        "room": {"max_order": 2},
        "camera": {"width": 16, "height": 12},
        **overrides,
    }
    return parse(BinauralSceneConfig, data, "simulate_binaural")


def _tiny_echoes() -> EchoSceneConfig:
    data = {"n_rooms": 2, "positions_per_room": 2, "room": {"max_order": 2}, "camera": {"width": 8, "height": 8}}
    return parse(EchoSceneConfig, data, "simulate_echoes")


def _arrays(root: Path, table: pd.DataFrame) -> list[np.ndarray]:
    out = []
    for column in [c for c in table.columns if c.endswith("_path")]:
        for rel in table[column]:
            path = root / rel
            if path.suffix == ".wav":
                out.append(sf.read(path, dtype="float32")[0])
            elif path.suffix == ".png":
                out.append(np.asarray(Image.open(path)))
            else:
                out.append(np.load(path))
    return out


BINAURAL_COLUMNS = {
    "sample_id", "room_id", "room_x_m", "room_y_m", "room_z_m", "absorption_x0", "absorption_ceiling",
    "listener_x_m", "listener_y_m", "listener_z_m", "listener_yaw_deg", "n_sources", "azimuth_deg",
    "elevation_deg", "distance_m", "pixel_x", "pixel_y", "source_class", "sources", "binaural_path",
    "mono_path", "frame_path", "depth_path",
}  # fmt: skip
ECHO_COLUMNS = {
    "sample_id", "room_id", "sample_rate", "room_x_m", "room_y_m", "room_z_m", "listener_x_m",
    "listener_y_m", "listener_z_m", "listener_yaw_deg", "n_objects", "audio_path", "depth_path",
}  # fmt: skip


def test_binaural_dataset_is_deterministic_and_complete(tmp_path: Path) -> None:
    cfg = _tiny_binaural()
    one = synthesize_binaural(cfg, tmp_path / "one", seed=7, workers=1)
    two = synthesize_binaural(cfg, tmp_path / "two", seed=7, workers=2)
    pd.testing.assert_frame_equal(one, two)
    pd.testing.assert_frame_equal(one, pd.read_parquet(tmp_path / "one" / "scenes.parquet"))
    for a, b in zip(_arrays(tmp_path / "one", one), _arrays(tmp_path / "two", two), strict=True):
        np.testing.assert_array_equal(a, b)
    other = synthesize_binaural(cfg, tmp_path / "other", seed=8, workers=1)
    assert not np.array_equal(_arrays(tmp_path / "one", one)[0], _arrays(tmp_path / "other", other)[0])

    assert BINAURAL_COLUMNS <= set(one.columns)
    assert list(one["sample_id"]) == ["r000_s00", "r000_s01", "r001_s00", "r001_s01"]
    assert one["sample_id"].is_monotonic_increasing and one["room_id"].tolist() == [0, 0, 1, 1]
    row = one.iloc[0]
    stereo, sr = sf.read(tmp_path / "one" / row["binaural_path"], dtype="float32")
    mono, _ = sf.read(tmp_path / "one" / row["mono_path"], dtype="float32")
    assert sr == 22050 and stereo.shape == (cfg.num_samples, 2) and cfg.num_samples % 256 == 0
    assert np.abs(stereo).max() == pytest.approx(0.9, abs=1e-6)
    np.testing.assert_allclose(mono, stereo.mean(axis=1), atol=1e-6)
    frame = np.asarray(Image.open(tmp_path / "one" / row["frame_path"]))
    assert frame.shape == (12, 16, 3) and frame.dtype == np.uint8
    depth = np.load(tmp_path / "one" / row["depth_path"])
    assert depth.shape == (12, 16) and depth.dtype == np.float32 and (depth > 0).all()
    sources = json.loads(row["sources"])
    assert len(sources) == row["n_sources"] and sources[0]["class"] == row["source_class"]
    assert sources[0]["azimuth_deg"] == pytest.approx(row["azimuth_deg"])
    assert abs(row["azimuth_deg"]) <= 45.0 - 5.0


def test_binaural_frame_shows_the_source_where_it_projects(tmp_path: Path) -> None:
    cfg = _tiny_binaural(n_rooms=1, scenes_per_room=1, sources={"max_count": 1}, camera={"width": 96, "height": 72})
    row = synthesize_binaural(cfg, tmp_path / "out", seed=3, workers=1).iloc[0]
    depth = np.load(tmp_path / "out" / row["depth_path"])
    col, line = round(row["pixel_x"]), round(row["pixel_y"])
    # The ray through (the pixel nearest to) the source centre meets its sphere (radius 0.15 m).
    assert depth[line, col] == pytest.approx(row["distance_m"] - 0.15, abs=0.05)


def test_echo_dataset_is_deterministic_and_complete(tmp_path: Path) -> None:
    cfg = _tiny_echoes()
    one = synthesize_echoes(cfg, tmp_path / "one", seed=1, workers=1)
    two = synthesize_echoes(cfg, tmp_path / "two", seed=1, workers=2)
    pd.testing.assert_frame_equal(one, two)
    for a, b in zip(_arrays(tmp_path / "one", one), _arrays(tmp_path / "two", two), strict=True):
        np.testing.assert_array_equal(a, b)
    assert ECHO_COLUMNS <= set(one.columns)
    echoes, sr = sf.read(tmp_path / "one" / one.iloc[0]["audio_path"], dtype="float32")
    assert sr == 44100 and echoes.shape == (math.ceil(2 * 10.0 / C * 44100), 2)
    assert np.abs(echoes).max() > 0
    assert np.load(tmp_path / "one" / one.iloc[0]["depth_path"]).shape == (8, 8)


def test_failed_run_leaves_the_previous_output_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "marker").write_text("old")
    original = binaural_scenes.render_binaural_scene
    calls = []

    def failing(*args: object) -> dict:
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(binaural_scenes, "render_binaural_scene", failing)
    with pytest.raises(RuntimeError, match="killed"):
        synthesize_binaural(_tiny_binaural(), out, seed=0, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["marker"]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"camera": {"fov_deg": 500}}, "simulate_binaural.camera.fov_deg"),
        ({"sources": {"classes": ["banjo"]}}, "simulate_binaural.sources.classes[0]"),
        ({"sources": {"min_count": 3, "max_count": 2}}, "simulate_binaural.sources.min_count"),
        ({"room": {"size_min_m": [9.0, 3.0, 2.5]}}, "simulate_binaural.room.size_min_m"),
        ({"room": {"absorption": [0.5, 1.5]}}, "simulate_binaural.room.absorption[1]"),
        ({"head": {"model": "sofa"}}, "simulate_binaural.head.sofa_path"),
        ({"sources": {"elevation_deg": [-60.0, 10.0]}}, "simulate_binaural.sources.elevation_deg"),
        ({"n_rooms": 0}, "simulate_binaural.n_rooms"),
        ({"clip_second": 1.0}, "clip_second"),
    ],
)
def test_invalid_binaural_config_names_the_key(data: dict, key: str) -> None:
    with pytest.raises(ParamError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse(BinauralSceneConfig, data, "simulate_binaural")


def test_invalid_echo_config_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ParamError, match="simulate_echoes.chirp.f_end_hz"):
        parse(EchoSceneConfig, {"sample_rate": 16000}, "simulate_echoes")
    with pytest.raises(ParamError, match="simulate_echoes.emitter_directivity"):
        parse(EchoSceneConfig, {"emitter_directivity": 0.8}, "simulate_echoes")
    with pytest.raises(ParamError, match="workers"):
        synthesize_echoes(_tiny_echoes(), tmp_path / "out", seed=0, workers=0)


def test_partial_sections_keep_their_own_defaults() -> None:
    cfg = parse(EchoSceneConfig, {"camera": {"fov_deg": 60.0}}, "simulate_echoes")
    assert (cfg.camera.width, cfg.camera.height) == (64, 64)
    binaural_cfg = parse(BinauralSceneConfig, {"clip_seconds": 1.0}, "simulate_binaural")
    assert binaural_cfg.num_samples == 86 * 256  # 1 s at 22.05 kHz, rounded to whole hops
