"""Random scene layouts: rooms, listener poses and spheres placed in the camera's view.

Placement is by rejection: a candidate is redrawn until it fits (inside the room with a margin,
projecting inside the image, not touching other spheres); when a pose admits no fit, a new listener
pose is drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from binaural_lab.config import ParamError
from binaural_lab.data.simulate.config import RoomConfig
from binaural_lab.data.simulate.geometry import SURFACES, PinholeCamera, Pose, Room, unit_vector

EAR_HEIGHT_M = (1.2, 1.7)
CEILING_CLEARANCE_M = 0.3
TRIES_PER_SPHERE = 200
TRIES_PER_POSE = 100


class LayoutError(ParamError):
    """No layout satisfying the configured ranges was found (a configuration problem)."""


@dataclass(frozen=True)
class Sphere:
    """A sphere in the room: world centre, radius and where it lies as seen from the head."""

    centre: np.ndarray
    radius: float
    azimuth: float
    elevation: float
    distance: float
    pixel: np.ndarray


@dataclass(frozen=True)
class SphereRanges:
    """What to draw: azimuth, elevation and centre-distance ranges, radius range and a room margin."""

    azimuth: tuple[float, float]
    elevation: tuple[float, float]
    distance: tuple[float, float]
    radius: tuple[float, float]
    margin: float = 0.05


def draw_room(cfg: RoomConfig, rng: np.random.Generator) -> Room:
    """A room of uniform random size and one uniform random absorption per surface."""
    size = rng.uniform(cfg.size_min_m, cfg.size_max_m)
    return Room(size, rng.uniform(cfg.absorption[0], cfg.absorption[1], size=6))


def draw_pose(room: Room, wall_margin: float, rng: np.random.Generator) -> Pose:
    """A listener at ear height, at least ``wall_margin`` from the walls, facing a random yaw."""
    xy = rng.uniform(wall_margin, room.size[:2] - wall_margin)
    z = rng.uniform(EAR_HEIGHT_M[0], min(EAR_HEIGHT_M[1], room.size[2] - CEILING_CLEARANCE_M))
    return Pose(np.array([xy[0], xy[1], z]), float(rng.uniform(-math.pi, math.pi)))


def _draw_sphere(
    room: Room, pose: Pose, camera: PinholeCamera, ranges: SphereRanges, others: list[Sphere], rng: np.random.Generator
) -> Sphere | None:
    """One sphere that fits, or None after :data:`TRIES_PER_SPHERE` candidates."""
    for _ in range(TRIES_PER_SPHERE):
        azimuth, elevation = rng.uniform(*ranges.azimuth), rng.uniform(*ranges.elevation)
        distance, radius = rng.uniform(*ranges.distance), rng.uniform(*ranges.radius)
        local = distance * unit_vector(azimuth, elevation)
        centre = pose.position + pose.to_world(local)
        fits = bool(room.contains(centre, radius + ranges.margin)) and bool(camera.sees(local))
        fits = fits and distance > radius + 0.2
        fits = fits and all(np.linalg.norm(centre - o.centre) > radius + o.radius + 0.1 for o in others)
        if fits:
            return Sphere(centre, radius, azimuth, elevation, distance, camera.project(local))
    return None


def place_spheres(
    room: Room,
    camera: PinholeCamera,
    ranges: SphereRanges,
    count: int,
    wall_margin: float,
    rng: np.random.Generator,
) -> tuple[Pose, list[Sphere]]:
    """A listener pose and ``count`` non-touching spheres in its view, inside the room."""
    for _ in range(TRIES_PER_POSE):
        pose = draw_pose(room, wall_margin, rng)
        spheres: list[Sphere] = []
        while len(spheres) < count:
            sphere = _draw_sphere(room, pose, camera, ranges, spheres, rng)
            if sphere is None:
                break
            spheres.append(sphere)
        if len(spheres) == count:
            return pose, spheres
    raise LayoutError(
        f"could not place {count} sphere(s) in a {np.round(room.size, 2).tolist()} m room after "
        f"{TRIES_PER_POSE} listener poses; widen the distance/elevation ranges or enlarge the rooms"
    )


def room_rows(room: Room, pose: Pose) -> dict[str, Any]:
    """Metadata columns of a room and a listener pose."""
    row: dict[str, Any] = {f"room_{axis}_m": float(v) for axis, v in zip("xyz", room.size, strict=True)}
    row.update({f"absorption_{name}": float(v) for name, v in zip(SURFACES, room.absorption, strict=True)})
    row.update({f"listener_{axis}_m": float(v) for axis, v in zip("xyz", pose.position, strict=True)})
    row["listener_yaw_deg"] = math.degrees(pose.yaw)
    return row
