"""Shoebox rooms, listener poses, the pinhole camera and ray casting.

Conventions used by the whole simulation:

* World frame: a shoebox room spans ``[0, Lx] x [0, Ly] x [0, Lz]`` metres, z up (floor at z = 0).
* The listener stands at a position with a yaw: the angle from the world x axis to the direction
  the head faces, counter-clockwise seen from above. The head never pitches or rolls.
* Head frame: x forward, y to the listener's LEFT, z up. Azimuth is measured from x towards y, so a
  positive azimuth is to the listener's left; elevation is positive upwards.
* Camera: a pinhole at the head centre looking along x of the head frame. Image columns grow to the
  listener's right and rows grow downwards; the centre of pixel (row 0, column 0) has pixel
  coordinates (0, 0), so a direction projects to a continuous (column, row) = (pixel_x, pixel_y).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Surface ids of a shoebox, in the order used for absorption values and depth-map labels.
SURFACES = ("x0", "x1", "y0", "y1", "floor", "ceiling")


@dataclass(frozen=True)
class Room:
    """A shoebox room: size ``[Lx, Ly, Lz]`` in metres and energy absorption per surface."""

    size: np.ndarray
    absorption: np.ndarray

    @property
    def reflection(self) -> np.ndarray:
        """Pressure reflection factor per surface, sqrt(1 - absorption)."""
        return np.sqrt(1.0 - self.absorption)

    def contains(self, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Whether each point ``[..., 3]`` lies inside the room at least ``margin`` from every surface."""
        return np.all((points >= margin) & (points <= self.size - margin), axis=-1)


@dataclass(frozen=True)
class Pose:
    """Listener head centre (world, metres) and yaw (radians, counter-clockwise from world x)."""

    position: np.ndarray
    yaw: float

    def rotation(self) -> np.ndarray:
        """Matrix whose rows are the head's x, y, z axes in world coordinates (world -> head)."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])

    def to_head(self, points: np.ndarray) -> np.ndarray:
        """World points ``[..., 3]`` in the head frame."""
        return (np.asarray(points) - self.position) @ self.rotation().T

    def to_world(self, vectors: np.ndarray) -> np.ndarray:
        """Head-frame direction vectors ``[..., 3]`` in world coordinates."""
        return np.asarray(vectors) @ self.rotation()


def unit_vector(azimuth: np.ndarray | float, elevation: np.ndarray | float) -> np.ndarray:
    """Unit vector(s) ``[..., 3]`` in the head frame for azimuth/elevation in radians."""
    az, el = np.asarray(azimuth, dtype=float), np.asarray(elevation, dtype=float)
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1)


@dataclass(frozen=True)
class PinholeCamera:
    """Pinhole camera with square pixels and a horizontal field of view (radians)."""

    fov: float
    width: int
    height: int

    @property
    def focal(self) -> float:
        """Focal length in pixels."""
        return self.width / 2 / math.tan(self.fov / 2)

    def rays(self) -> np.ndarray:
        """Unit ray directions ``[height, width, 3]`` in the head frame, through each pixel centre."""
        cols = np.arange(self.width) + 0.5 - self.width / 2
        rows = np.arange(self.height) + 0.5 - self.height / 2
        col, row = np.meshgrid(cols, rows)
        rays = np.stack([np.full_like(col, self.focal), -col, -row], axis=-1)
        return rays / np.linalg.norm(rays, axis=-1, keepdims=True)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Pixel coordinates ``[..., 2]`` (pixel_x, pixel_y) of head-frame points in front of the camera."""
        p = np.asarray(points, dtype=float)
        x = self.focal * -p[..., 1] / p[..., 0] + self.width / 2 - 0.5
        y = self.focal * -p[..., 2] / p[..., 0] + self.height / 2 - 0.5
        return np.stack([x, y], axis=-1)

    def sees(self, points: np.ndarray) -> np.ndarray:
        """Whether head-frame points lie in front of the camera and project inside the image."""
        p = np.asarray(points, dtype=float)
        ahead = p[..., 0] > 1e-6
        safe = np.where(ahead[..., None], p, 1.0)
        pix = self.project(safe)
        inside = (pix[..., 0] >= -0.5) & (pix[..., 0] <= self.width - 0.5)
        inside &= (pix[..., 1] >= -0.5) & (pix[..., 1] <= self.height - 0.5)
        return ahead & inside


@dataclass(frozen=True)
class RayHits:
    """First surface met by each ray: distance along the ray, what was hit and its normal.

    ``surface`` is an index into :data:`SURFACES` for the room, or ``len(SURFACES) + k`` for sphere k.
    """

    depth: np.ndarray
    surface: np.ndarray
    point: np.ndarray
    normal: np.ndarray


def cast_rays(
    origin: np.ndarray, rays: np.ndarray, room_size: np.ndarray, centres: np.ndarray, radii: np.ndarray
) -> RayHits:
    """Cast unit ``rays [..., 3]`` (world frame) from ``origin`` inside a shoebox holding spheres.

    The depth is the distance along each ray to the first surface it meets (a wall, the floor, the
    ceiling or a sphere seen from outside).
    """
    origin = np.asarray(origin, dtype=float)
    flat = rays.reshape(-1, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(flat > 0, room_size, 0.0)
        t_axis = np.where(flat != 0, (bound - origin) / flat, np.inf)
    axis = np.argmin(t_axis, axis=1)
    depth = t_axis[np.arange(len(flat)), axis]
    surface = 2 * axis + (flat[np.arange(len(flat)), axis] > 0)
    normal = np.zeros_like(flat)
    normal[np.arange(len(flat)), axis] = -np.sign(flat[np.arange(len(flat)), axis])

    for k, (centre, radius) in enumerate(zip(np.reshape(centres, (-1, 3)), np.ravel(radii), strict=True)):
        to_centre = centre - origin
        along = flat @ to_centre
        disc = along**2 - (to_centre @ to_centre - radius**2)
        t = along - np.sqrt(np.maximum(disc, 0.0))
        hit = (disc >= 0) & (t > 0) & (t < depth)
        depth = np.where(hit, t, depth)
        surface = np.where(hit, len(SURFACES) + k, surface)
        sphere_normal = (origin + t[:, None] * flat - centre) / radius
        normal = np.where(hit[:, None], sphere_normal, normal)

    point = origin + depth[:, None] * flat
    shape = rays.shape[:-1]
    return RayHits(depth.reshape(shape), surface.reshape(shape), point.reshape(rays.shape), normal.reshape(rays.shape))
