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
from binaural_lab.data.simulate.geometry import PinholeCamera, Pose, Room, cast_rays, unit_vector
from binaural_lab.data.simulate.heads import Arrivals, SphericalHead
from binaural_lab.data.simulate.imaging import render_frame
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


def _pixel_angles(camera: PinholeCamera) -> np.ndarray:
    """Angle ``[H, W]`` between each pixel's ray and the optical axis, from the pinhole model alone: the
    pixel centres lie on a plane one focal length f = (W / 2) / tan(fov / 2) in front of the pinhole,
    the principal point at the image centre. Symmetric under flips, so it assumes no axis direction."""
    focal = camera.width / 2 / math.tan(camera.fov / 2)
    col = np.arange(camera.width) - (camera.width - 1) / 2
    row = np.arange(camera.height) - (camera.height - 1) / 2
    return np.arctan(np.hypot(col[None, :], row[:, None]) / focal)


@pytest.mark.parametrize("kind", ["ray", "planar"])
@pytest.mark.parametrize("yaw_deg", [0.0, 120.0])
def test_depth_of_a_sphere_on_the_optical_axis_follows_from_its_geometry(kind: str, yaw_deg: float) -> None:
    # A sphere of radius R centred d ahead is a disc of angular radius asin(R / d) about the image
    # centre; a ray at angle theta to the axis meets it at t = d cos(theta) - sqrt(R^2 - d^2 sin^2(theta))
    # (law of cosines), and its planar depth is t cos(theta).
    distance, radius = 2.0, 0.5
    room = Room(np.array([6.0, 5.0, 3.0]), np.full(6, 0.5))
    pose = Pose(np.array([2.5, 2.0, 1.5]), yaw=math.radians(yaw_deg))
    camera = PinholeCamera(math.radians(90.0), 33, 25)
    centre = pose.position + distance * pose.to_world(unit_vector(0.0, 0.0))
    sphere = Sphere(centre, radius, 0.0, 0.0, distance, np.array([16.0, 12.0]))
    depth = depth_map(room, pose, [sphere], camera, 100.0, kind)
    assert depth.dtype == np.float32 and depth.shape == (25, 33)
    assert depth[12, 16] == pytest.approx(distance - radius, abs=1e-6)  # the odd-sized image's centre

    theta = _pixel_angles(camera)
    sin_rim = np.sin(theta) * distance / radius
    inside, outside = sin_rim < 0.98, sin_rim > 1.02
    assert inside.sum() > 50 and outside.sum() > 50
    along = distance * np.cos(theta) - np.sqrt(np.maximum(radius**2 - (distance * np.sin(theta)) ** 2, 0.0))
    expected = along * np.cos(theta) if kind == "planar" else along
    np.testing.assert_allclose(depth[inside], expected[inside], atol=1e-5)
    # Around the disc the rays pass the sphere and end on the room, farther than its nearest point.
    assert (depth[outside] > distance - radius + 0.1).all()


@pytest.mark.parametrize("size", [(201, 201), (64, 48)])
@pytest.mark.parametrize("yaw_deg", [0.0, 90.0, 180.0, -90.0])
def test_a_wall_facing_the_camera_has_one_planar_depth(size: tuple[int, int], yaw_deg: float) -> None:
    # A cube of 10 m with the head 2 m from the wall it faces and 5 m from the others: a 90 degree view
    # sees only that wall, at a planar depth of 2 m everywhere and a ray depth of 2 m / cos(theta).
    room = Room(np.full(3, 10.0), np.full(6, 0.5))
    forward = np.array([math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg)), 0.0])
    pose = Pose(np.full(3, 5.0) + 3.0 * forward, yaw=math.radians(yaw_deg))
    camera = PinholeCamera(math.radians(90.0), *size)
    planar = depth_map(room, pose, [], camera, 100.0, "planar")
    ray = depth_map(room, pose, [], camera, 100.0, "ray")
    np.testing.assert_allclose(planar, 2.0, atol=1e-5)
    np.testing.assert_allclose(ray, 2.0 / np.cos(_pixel_angles(camera)), rtol=1e-6)
    if size[0] == size[1]:
        # A corner pixel centre sits (W - 1) / 2 off both axes, at tan = (W - 1) / W of tan(45 deg).
        ratio = math.sqrt(1 + 2 * (math.tan(math.radians(45.0)) * (size[0] - 1) / size[0]) ** 2)
        corners = ray[[0, 0, -1, -1], [0, -1, 0, -1]] / planar[[0, 0, -1, -1], [0, -1, 0, -1]]
        np.testing.assert_allclose(corners, ratio, rtol=1e-6)
        assert corners == pytest.approx([math.sqrt(3)] * 4, rel=0.01)  # ~1.73


def test_depth_beyond_max_depth_is_invalid() -> None:
    # The cut applies to the depth that is written: with planar depth, pixels on the side walls (5.5 m
    # off the axis) just short of 10 m along the axis stay valid though their rays are longer than 10 m.
    room = Room(np.array([30.0, 11.0, 11.0]), np.full(6, 0.5))
    pose = Pose(np.array([2.0, 5.5, 5.5]), yaw=0.0)
    camera = PinholeCamera(math.radians(90.0), 32, 24)
    full = {kind: depth_map(room, pose, [], camera, 1e9, kind) for kind in ("planar", "ray")}
    for kind, depth in full.items():
        clipped = depth_map(room, pose, [], camera, 10.0, kind)
        far = depth > 10.0
        assert far.any() and (~far).any()
        assert np.all(clipped[far] == 0) and np.array_equal(clipped[~far], depth[~far])
    planar_cut = depth_map(room, pose, [], camera, 10.0, "planar")
    assert ((full["ray"] > 10.0) & (planar_cut > 0)).any()
    with pytest.raises(ValueError, match="depth kind"):
        depth_map(room, pose, [], camera, 10.0, "z")


@pytest.mark.parametrize("azimuth_deg", [30.0, -30.0])
def test_a_source_on_the_left_is_drawn_on_the_left_and_heard_first_and_louder_on_the_left(azimuth_deg: float) -> None:
    # Positive azimuth is to the listener's left (geometry module); the source sits 15 degrees up.
    room = Room(np.array([8.0, 7.0, 3.0]), np.full(6, 0.5))
    pose = Pose(np.array([4.0, 3.5, 1.5]), yaw=2.0)
    camera = PinholeCamera(math.radians(90.0), 48, 36)
    local = 2.0 * unit_vector(math.radians(azimuth_deg), math.radians(15.0))
    centre = pose.position + pose.to_world(local)
    rays = pose.to_world(camera.rays())
    frame = render_frame(cast_rays(pose.position, rays, room.size, centre[None], np.array([0.3])), rays, ["harmonic"])
    red, green, blue = frame.astype(int).transpose(2, 0, 1)
    drawn = (red > 2 * green) & (red > 2 * blue)  # the red "harmonic" sphere
    rows, cols = np.nonzero(drawn)
    assert len(cols) > 20
    left = azimuth_deg > 0
    assert (cols < camera.width / 2).all() == left and (cols >= camera.width / 2).all() == (not left)
    assert (rows < camera.height / 2).all()  # up is up
    assert (camera.project(local)[0] < camera.width / 2) == left

    ears = room_impulse_response(room, centre, pose, SphericalHead(A), 0, SR, 1024)
    assert (_itd_ms(ears) > 0.1) == left and (_itd_ms(ears) < -0.1) == (not left)  # > 0: left ear leads
    energy = np.sum(ears**2, axis=1)
    assert (energy[0] > 1.5 * energy[1]) == left and (energy[1] > 1.5 * energy[0]) == (not left)


def _brown_duda_alpha(psi_deg: float) -> float:
    """Brown & Duda (1998), eq. 3: high-frequency gain at angle psi from the ear's axis, with the
    published alpha_min = 0.1 at theta_min = 150 degrees."""
    return 1.05 + 0.95 * math.cos(math.radians(psi_deg) / math.radians(150.0) * math.pi)


@pytest.mark.parametrize("psi_deg", [0.0, 45.0, 90.0, 150.0, 180.0])
def test_head_shadow_gain_is_one_at_dc_and_alpha_at_high_frequency(psi_deg: float) -> None:
    # One arrival in the horizontal plane at psi from the left ear's axis (+y), so 180 - psi from the
    # right ear's. A rate of 100 MHz puts Nyquist at w a / (2 c) ~ 4e4: far above the corner.
    direction = unit_vector(math.radians(90.0 - psi_deg), 0.0)[None]
    arrival = Arrivals(direction, np.zeros(1), np.ones(1))
    gain = np.abs(SphericalHead(A).spectrum(arrival, 100_000_000, 64))
    np.testing.assert_allclose(gain[:, 0], 1.0, atol=1e-12)
    expected = [_brown_duda_alpha(psi_deg), _brown_duda_alpha(180.0 - psi_deg)]
    np.testing.assert_allclose(gain[:, -1], expected, rtol=1e-4)
    if psi_deg == 0.0:  # on the ear's axis a rigid sphere doubles the pressure at high frequency: +6 dB
        assert 20 * math.log10(gain[0, -1]) == pytest.approx(6.02, abs=0.01)


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
    "mono_path", "frame_path", "depth_path", "depth_kind",
}  # fmt: skip
ECHO_COLUMNS = {
    "sample_id", "room_id", "sample_rate", "room_x_m", "room_y_m", "room_z_m", "listener_x_m",
    "listener_y_m", "listener_z_m", "listener_yaw_deg", "n_objects", "audio_path", "depth_path", "depth_kind",
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
    assert set(one["depth_kind"]) == {"ray"}


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
    assert set(one["depth_kind"]) == {"planar"}  # the default, as Batvision's and Habitat's cameras
    pd.testing.assert_frame_equal(one, pd.read_parquet(tmp_path / "one" / "scenes.parquet"))


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
    with pytest.raises(ParamError, match=r"simulate_echoes.depth_kind: 'z' is not one of \['planar', 'ray'\]"):
        parse(EchoSceneConfig, {"depth_kind": "z"}, "simulate_echoes")
    with pytest.raises(ParamError, match="workers"):
        synthesize_echoes(_tiny_echoes(), tmp_path / "out", seed=0, workers=0)


def test_partial_sections_keep_their_own_defaults() -> None:
    cfg = parse(EchoSceneConfig, {"camera": {"fov_deg": 60.0}}, "simulate_echoes")
    assert (cfg.camera.width, cfg.camera.height) == (64, 64)
    binaural_cfg = parse(BinauralSceneConfig, {"clip_seconds": 1.0}, "simulate_binaural")
    assert binaural_cfg.num_samples == 86 * 256  # 1 s at 22.05 kHz, rounded to whole hops
