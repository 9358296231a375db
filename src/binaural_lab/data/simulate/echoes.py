"""Echo scenes for depth from binaural echoes: a chirp from the head, its echoes at both ears.

The emitter sits at the head centre and faces the view direction with the first-order directivity
``D(theta) = (1 - k) + k cos(theta)`` (``k = emitter_directivity``; 0.5 is a cardioid, so the echoes
of what the camera sees dominate). What the ears record is the chirp convolved with:

* the room's image sources of the emitter (order 1..max_order), each weighted by ``D`` of the
  direction in which its path leaves the emitter, and received at both ears through the head model;
* each sphere's specular echo: the path head centre -> nearest point of the sphere -> each ear, of
  range r = |centre - head| - R, arriving at 2 r / c (plus the ear's head delay) from the sphere's
  direction, with the geometric-acoustics amplitude of a convex mirror of radius R,
  ``R / (2 r (r + R))`` (-> 1 / (2 r), a plane, for large R; ~ R / (2 r^2) for small R), times the
  sphere's reflection factor and ``D`` towards it.

The direct emitter-to-ear path is excluded (as if gated out), so the signal holds echoes only; the
audio is not normalised (the chirp has unit amplitude, gains are physical). Spheres do not occlude
room reflections and sphere-wall paths are ignored. Echoes are recorded for ``2 * max_depth / c``
seconds; the ground-truth depth map is ray-cast against exactly the six room surfaces and the spheres.

Depth kind (``depth_kind``): ``planar`` (the default) writes the distance along the optical axis (the
head's x, "z" in camera terms), ``ray * cos(angle to the axis)``, which is what Batvision's stereo
camera and Habitat's depth sensor (Replica, Matterport3D) give; ``ray`` writes the distance along
each pixel's ray. They agree at the image centre; at the corner of a 90 degree square view ray is
sqrt(3) ~ 1.73 times planar. Pixels whose depth, of the kind written, exceeds ``max_depth`` are set
to 0 (invalid), as a depth camera's range limit applies to the depth it reports. With planar depth a
valid pixel off the axis can therefore lie up to ``max_depth / cos(angle)`` away along its ray, so
its echo may arrive after the recording ends (only near the corners, for surfaces near max_depth).

Files, relative to the output directory: ``echoes/<id>.wav`` (2 channels, float) and
``depth/<id>.npy`` (float32 metres of the configured kind, 0 = invalid). Every metadata row names
its ``depth_kind``.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.signal import fftconvolve
from scipy.signal.windows import tukey

from binaural_lab.audio.io import write_audio
from binaural_lab.data.simulate.acoustics import arrivals_from, image_sources, impulse_response
from binaural_lab.data.simulate.config import DEPTH_KINDS, SPEED_OF_SOUND, ChirpConfig, EchoSceneConfig
from binaural_lab.data.simulate.geometry import PinholeCamera, Pose, Room, cast_rays, unit_vector
from binaural_lab.data.simulate.heads import Arrivals, HeadModel, make_head
from binaural_lab.data.simulate.layout import Sphere, SphereRanges, draw_room, place_spheres, room_rows
from binaural_lab.data.simulate.runner import Task, generate, room_rng, sample_id, sample_rng

SUBDIRS = ("echoes", "depth")


def chirp(cfg: ChirpConfig, sample_rate: int) -> np.ndarray:
    """Linear chirp from ``f_start_hz`` to ``f_end_hz`` with Hann-tapered edges (unit amplitude)."""
    n = max(2, round(cfg.duration_ms / 1000 * sample_rate))
    t = np.arange(n) / sample_rate
    duration = n / sample_rate
    sweep = cfg.f_start_hz * t + (cfg.f_end_hz - cfg.f_start_hz) * t**2 / (2 * duration)
    return np.sin(2 * np.pi * sweep) * tukey(n, alpha=2 * cfg.taper)


def directivity(emission: np.ndarray, pose: Pose, k: float) -> np.ndarray:
    """First-order emitter gain ``(1 - k) + k cos(theta)`` for world unit emission vectors ``[K, 3]``."""
    forward = pose.to_world(unit_vector(0.0, 0.0))
    return (1 - k) + k * (emission @ forward)


def echo_arrivals(
    room: Room, pose: Pose, spheres: list[Sphere], reflection: np.ndarray, k: float, max_order: int
) -> Arrivals:
    """Arrivals at the head of the room's and the spheres' echoes of the head-centred emitter."""
    images = image_sources(room, pose.position, max_order)
    echo = images.order > 0
    position, mirror = images.position[echo], images.mirror[echo]
    to_head = pose.position - position
    # Unfolding mirrors the path: it leaves the emitter along (head - image), flipped on every axis
    # along which the image is mirrored an odd number of times.
    emission = mirror * to_head / np.linalg.norm(to_head, axis=1, keepdims=True)
    parts = [arrivals_from(position, images.reflection[echo] * directivity(emission, pose, k), pose)]
    if spheres:
        centre = np.array([s.centre for s in spheres])
        radius = np.array([s.radius for s in spheres])
        offset = centre - pose.position
        distance = np.linalg.norm(offset, axis=1)
        outward = offset / distance[:, None]
        r = distance - radius
        gain = reflection * radius / (2 * r * (r + radius)) * directivity(outward, pose, k)
        parts.append(Arrivals(pose.to_head(centre) / distance[:, None], 2 * r / SPEED_OF_SOUND, gain))
    return Arrivals.concat(parts)


def record_echoes(
    arrivals: Arrivals, head: HeadModel, probe: np.ndarray, sample_rate: int, n_samples: int
) -> np.ndarray:
    """What the two ears record ``[2, n_samples]``: the probe through the echo impulse response."""
    ir = impulse_response(arrivals, head, sample_rate, n_samples)
    return fftconvolve(probe[None], ir, axes=-1)[:, :n_samples]


def depth_map(
    room: Room, pose: Pose, spheres: list[Sphere], camera: PinholeCamera, max_depth: float, kind: str
) -> np.ndarray:
    """Float32 depth of the first surface seen through each pixel, ``kind`` ``planar`` (along the
    optical axis) or ``ray`` (along the pixel's ray); 0 where that depth exceeds ``max_depth``."""
    if kind not in DEPTH_KINDS:
        raise ValueError(f"depth kind {kind!r} is not one of {list(DEPTH_KINDS)}")
    centres = np.array([s.centre for s in spheres]).reshape(-1, 3)
    radii = np.array([s.radius for s in spheres])
    rays = camera.rays()
    depth = cast_rays(pose.position, pose.to_world(rays), room.size, centres, radii).depth
    if kind == "planar":
        depth = depth * rays[..., 0]  # the ray's unit vector along the optical axis (head x): cos(angle)
    return np.where(depth > max_depth, 0.0, depth).astype(np.float32)


def render_echo_sample(cfg: EchoSceneConfig, seed: int, out_dir: Path, task: Task) -> dict[str, Any]:
    """Simulate one listener position, write its files under ``out_dir`` and return its metadata row."""
    room_id, index = task
    room = draw_room(cfg.room, room_rng(seed, room_id))
    rng = sample_rng(seed, room_id, index)
    camera = PinholeCamera(math.radians(cfg.camera.fov_deg), cfg.camera.width, cfg.camera.height)
    half_h, half_v = camera.fov / 2, math.radians(cfg.camera.vertical_fov_deg) / 2
    ranges = SphereRanges(
        azimuth=(-half_h, half_h),
        elevation=(-half_v, half_v),
        distance=(cfg.objects.distance_m[0], cfg.objects.distance_m[1]),
        radius=(cfg.objects.radius_m[0], cfg.objects.radius_m[1]),
    )
    count = int(rng.integers(cfg.objects.min_count, cfg.objects.max_count + 1))
    pose, spheres = place_spheres(room, camera, ranges, count, cfg.room.wall_margin_m, rng)
    reflection = np.sqrt(1 - rng.uniform(cfg.room.absorption[0], cfg.room.absorption[1], size=count))

    arrivals = echo_arrivals(room, pose, spheres, reflection, cfg.emitter_directivity, cfg.room.max_order)
    head = make_head(cfg.head)
    echoes = record_echoes(arrivals, head, chirp(cfg.chirp, cfg.sample_rate), cfg.sample_rate, cfg.num_samples)
    depth = depth_map(room, pose, spheres, camera, cfg.max_depth_m, cfg.depth_kind)

    name = sample_id("p", room_id, index, cfg.n_rooms, cfg.positions_per_room)
    paths = {"audio_path": f"echoes/{name}.wav", "depth_path": f"depth/{name}.npy"}
    write_audio(out_dir / paths["audio_path"], echoes, cfg.sample_rate)
    np.save(out_dir / paths["depth_path"], depth)
    objects = [
        {
            "centre_m": [float(v) for v in s.centre],
            "radius_m": float(s.radius),
            "azimuth_deg": math.degrees(s.azimuth),
            "elevation_deg": math.degrees(s.elevation),
            "distance_m": float(s.distance),
        }
        for s in spheres
    ]
    return {
        "sample_id": name,
        "room_id": room_id,
        "position_index": index,
        "sample_rate": cfg.sample_rate,
        "num_samples": cfg.num_samples,
        "max_depth_m": cfg.max_depth_m,
        "depth_kind": cfg.depth_kind,
        **room_rows(room, pose),
        "n_objects": count,
        "objects": json.dumps(objects),
        "valid_fraction": float(np.mean(depth > 0)),
        **paths,
    }


def synthesize_echoes(cfg: EchoSceneConfig, out_dir: Path, seed: int, workers: int) -> pd.DataFrame:
    """Simulate ``n_rooms * positions_per_room`` echo samples into ``out_dir`` (atomically).

    Writes the echoes and depth maps plus ``scenes.parquet`` and returns that table.
    """
    make_head(cfg.head)  # fail early, in this process, on a missing or malformed SOFA file
    render = functools.partial(render_echo_sample, cfg, seed)
    return generate(render, cfg.n_rooms, cfg.positions_per_room, Path(out_dir), SUBDIRS, workers, "echo scenes")
