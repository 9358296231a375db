"""Typed configurations of the two simulated datasets (read with :func:`binaural_lab.config.parse`).

Ranges are written as ``[min, max]`` lists. The defaults are sized for a fast run on a 2-core CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from binaural_lab.audio.mel import MEL_HOP
from binaural_lab.config import ParamError, param

SOURCE_CLASSES = ("harmonic", "plucked", "percussive", "voice")
HEAD_MODELS = ("spherical", "sofa")
DEPTH_KINDS = ("planar", "ray")
SPEED_OF_SOUND = 343.0


def _check_range(values: list[float], key: str) -> None:
    if len(values) != 2 or values[0] > values[1]:
        raise ParamError(f"{key}: expected [min, max] with min <= max, got {values!r}")


def _check_span(low: float, high: float, key: str) -> None:
    if low > high:
        raise ParamError(f"{key}: min {low!r} is larger than max {high!r}")


@dataclass
class RoomConfig:
    """Random shoebox rooms: one size and one absorption per surface, drawn per room_id."""

    size_min_m: list[float] = param([3.0, 3.0, 2.5], gt=0.0, le=100.0, doc="smallest [x, y, z] in m")
    size_max_m: list[float] = param([8.0, 8.0, 3.5], gt=0.0, le=100.0, doc="largest [x, y, z] in m")
    absorption: list[float] = param([0.2, 0.7], ge=0.0, le=1.0, doc="[min, max] energy absorption")
    max_order: int = param(6, ge=0, le=30, doc="image-source reflection order")
    wall_margin_m: float = param(0.5, gt=0.0, le=5.0, doc="least distance of the listener to a wall")

    def validate(self, where: str) -> None:
        """Each size is three numbers, min <= max, and the margin leaves room for the listener."""
        for name in ("size_min_m", "size_max_m"):
            if len(getattr(self, name)) != 3:
                raise ParamError(f"{where}.{name}: expected [x, y, z], got {getattr(self, name)!r}")
        for axis, low, high in zip("xyz", self.size_min_m, self.size_max_m, strict=True):
            _check_span(low, high, f"{where}.size_min_m[{axis}]")
        _check_range(self.absorption, f"{where}.absorption")
        if 2 * self.wall_margin_m >= min(self.size_min_m[:2]):
            raise ParamError(f"{where}.wall_margin_m: {self.wall_margin_m} leaves no room in the smallest room")
        if self.size_min_m[2] <= 2.0:
            raise ParamError(f"{where}.size_min_m[z]: rooms must be higher than 2 m (ears at 1.2..1.7 m)")


@dataclass
class HeadConfig:
    """The listener's head: an analytic sphere or a measured HRTF (SOFA file)."""

    model: str = param("spherical", choices=HEAD_MODELS, doc="spherical (Brown & Duda) or sofa")
    radius_m: float = param(0.0875, ge=0.05, le=0.15, doc="sphere radius; ears at +-radius")
    sofa_path: str | None = param(None, doc="SOFA (HDF5) file for model 'sofa'")

    def validate(self, where: str) -> None:
        """A SOFA head needs a file."""
        if self.model == "sofa" and not self.sofa_path:
            raise ParamError(f"{where}.sofa_path: required when {where}.model is 'sofa'")


@dataclass
class CameraConfig:
    """Pinhole camera at the head centre, looking along the listener's yaw."""

    fov_deg: float = param(90.0, ge=20.0, le=150.0, doc="horizontal field of view")
    width: int = param(160, ge=8, le=4096)
    height: int = param(120, ge=8, le=4096)

    @property
    def vertical_fov_deg(self) -> float:
        """Vertical field of view implied by the aspect ratio (square pixels)."""
        half = math.atan(math.tan(math.radians(self.fov_deg) / 2) * self.height / self.width)
        return math.degrees(2 * half)


@dataclass
class EchoCameraConfig(CameraConfig):
    """The echo scenes' camera: a small square depth map by default."""

    width: int = param(64, ge=8, le=4096)
    height: int = param(64, ge=8, le=4096)


@dataclass
class SourcesConfig:
    """Static sound sources, drawn as spheres inside the camera's horizontal field of view."""

    min_count: int = param(1, ge=1, le=8)
    max_count: int = param(2, ge=1, le=8)
    distance_m: list[float] = param([1.0, 5.0], gt=0.3, le=50.0, doc="[min, max] from the head centre")
    elevation_deg: list[float] = param([-20.0, 20.0], ge=-80.0, le=80.0, doc="[min, max], up positive")
    classes: list[str] = param(list(SOURCE_CLASSES), choices=SOURCE_CLASSES, doc="signal classes drawn")
    radius_m: float = param(0.15, gt=0.0, le=1.0, doc="radius of the sphere drawn for a source")
    fov_margin_deg: float = param(5.0, ge=0.0, le=60.0, doc="azimuth margin inside the horizontal FOV")

    def validate(self, where: str) -> None:
        """Counts and ranges are ordered; at least one class."""
        _check_span(self.min_count, self.max_count, f"{where}.min_count")
        _check_range(self.distance_m, f"{where}.distance_m")
        _check_range(self.elevation_deg, f"{where}.elevation_deg")
        if not self.classes:
            raise ParamError(f"{where}.classes: name at least one of {list(SOURCE_CLASSES)}")


@dataclass
class BinauralSceneConfig:
    """Binaural scenes: sources in a reverberant room, rendered at two ears, plus a camera view.

    The clip length is ``round(clip_seconds * sample_rate / 256) * 256`` samples (at least 256), a
    multiple of the mel hop so that mel frames and samples align exactly.
    """

    sample_rate: int = param(22050, ge=8000, le=96000)
    n_rooms: int = param(48, ge=1, le=100000)
    scenes_per_room: int = param(4, ge=1, le=1000)
    clip_seconds: float = param(1.5, gt=0.0, le=60.0, doc="rounded to a multiple of the 256-sample hop")
    ir_seconds: float = param(0.3, gt=0.01, le=5.0, doc="impulse-response length; later arrivals dropped")
    room: RoomConfig = field(default_factory=RoomConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)

    @property
    def num_samples(self) -> int:
        """Clip length in samples, a multiple of the hop."""
        return max(1, round(self.clip_seconds * self.sample_rate / MEL_HOP)) * MEL_HOP

    def validate(self, where: str) -> None:
        """The FOV margin leaves an azimuth range and the elevation range fits the camera."""
        half = self.camera.fov_deg / 2
        if self.sources.fov_margin_deg >= half:
            raise ParamError(f"{where}.sources.fov_margin_deg: must be below half the FOV ({half} deg)")
        vhalf = self.camera.vertical_fov_deg / 2
        if max(abs(e) for e in self.sources.elevation_deg) >= vhalf:
            raise ParamError(
                f"{where}.sources.elevation_deg: {self.sources.elevation_deg} leaves the camera's "
                f"vertical field of view (+-{vhalf:.1f} deg)"
            )


@dataclass
class ChirpConfig:
    """The emitted probe: a linear chirp with Hann-tapered edges."""

    duration_ms: float = param(3.0, gt=0.1, le=100.0)
    f_start_hz: float = param(20.0, gt=0.0)
    f_end_hz: float = param(20000.0, gt=0.0)
    taper: float = param(0.1, gt=0.0, le=0.5, doc="fraction of the chirp in each Hann edge")


@dataclass
class ObjectsConfig:
    """Spheres placed in the room, their centres inside the camera's view frustum."""

    min_count: int = param(0, ge=0, le=16)
    max_count: int = param(3, ge=0, le=16)
    radius_m: list[float] = param([0.2, 0.6], gt=0.0, le=3.0, doc="[min, max] sphere radius")
    distance_m: list[float] = param([1.0, 6.0], gt=0.3, le=50.0, doc="[min, max] head to centre")

    def validate(self, where: str) -> None:
        """Counts and ranges are ordered."""
        _check_span(self.min_count, self.max_count, f"{where}.min_count")
        _check_range(self.radius_m, f"{where}.radius_m")
        _check_range(self.distance_m, f"{where}.distance_m")


@dataclass
class EchoSceneConfig:
    """Echo scenes: a chirp from the head, its echoes at both ears, and the camera's depth map.

    The emitter sits at the head centre with a first-order directivity ``(1 - k) + k cos(theta)``
    about the view direction (``k = emitter_directivity``: 0 omnidirectional, 0.5 cardioid).

    ``depth_kind`` says what a depth pixel holds: ``planar``, the distance along the optical axis (z),
    as Batvision's stereo camera and Habitat's depth sensor (Replica, Matterport3D) give it, or
    ``ray``, the distance along the pixel's ray. ``max_depth_m`` cuts the kind that is written.
    """

    sample_rate: int = param(44100, ge=8000, le=192000)
    n_rooms: int = param(160, ge=1, le=100000)
    positions_per_room: int = param(6, ge=1, le=1000)
    max_depth_m: float = param(10.0, gt=0.5, le=100.0, doc="echoes are recorded for 2 * max_depth / c")
    emitter_directivity: float = param(0.5, ge=0.0, le=0.5, doc="0 omni, 0.5 cardioid")
    depth_kind: str = param(
        "planar", choices=DEPTH_KINDS, doc="planar: distance along the optical axis (z); ray: along each ray"
    )
    chirp: ChirpConfig = field(default_factory=ChirpConfig)
    room: RoomConfig = field(default_factory=RoomConfig)
    objects: ObjectsConfig = field(default_factory=ObjectsConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    camera: EchoCameraConfig = field(default_factory=EchoCameraConfig)

    @property
    def num_samples(self) -> int:
        """Recorded samples: the round trip to max_depth."""
        return math.ceil(2 * self.max_depth_m / SPEED_OF_SOUND * self.sample_rate)

    def validate(self, where: str) -> None:
        """The chirp fits below Nyquist and inside the recording."""
        nyquist = self.sample_rate / 2
        for name in ("f_start_hz", "f_end_hz"):
            if getattr(self.chirp, name) >= nyquist:
                raise ParamError(f"{where}.chirp.{name}: must be below Nyquist ({nyquist} Hz)")
        if self.chirp.duration_ms / 1000 * self.sample_rate >= self.num_samples:
            raise ParamError(f"{where}.chirp.duration_ms: longer than the recording for max_depth_m")
