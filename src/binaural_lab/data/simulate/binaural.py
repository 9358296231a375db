"""Binaural scenes: static sources in a shoebox room heard at two ears and seen by a head camera.

Per scene, 1..N sources are placed inside the camera's horizontal field of view (with a margin) and
inside the room, each with a class drawn from the configured ones and a random level (0 to -6 dB); the
sources are listed loudest first (energy at the two ears), so the first is the scene's main source.
Each source signal is convolved with its binaural room impulse response; the signal
starts one IR length before the clip, so the clip holds steady-state reverberation from its first
sample. The scene is scaled by one peak gain (interaural level differences are kept) and the mono
mix is (L + R) / 2. The frame and the depth map are ray-cast from the head centre through the same
pinhole camera; sources are drawn as spheres with class-specific colours and textures.

Files, relative to the output directory: ``binaural/<id>.wav`` (2 channels), ``mono/<id>.wav``,
``frames/<id>.png`` (uint8 RGB), ``depth/<id>.npy`` (float32 metres along each ray; every metadata
row names this ``depth_kind``, ``ray``).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy.signal import fftconvolve

from binaural_lab.audio.io import write_audio
from binaural_lab.data.simulate.acoustics import room_impulse_response
from binaural_lab.data.simulate.config import BinauralSceneConfig
from binaural_lab.data.simulate.geometry import PinholeCamera, cast_rays
from binaural_lab.data.simulate.heads import make_head
from binaural_lab.data.simulate.imaging import render_frame
from binaural_lab.data.simulate.layout import Sphere, SphereRanges, draw_room, place_spheres, room_rows
from binaural_lab.data.simulate.runner import Task, generate, room_rng, sample_id, sample_rng
from binaural_lab.data.simulate.sources import source_signal

PEAK = 0.9
LEVEL_RANGE_DB = (-6.0, 0.0)
SUBDIRS = ("binaural", "mono", "frames", "depth")


def camera_of(cfg: BinauralSceneConfig) -> PinholeCamera:
    """The configured head camera."""
    return PinholeCamera(math.radians(cfg.camera.fov_deg), cfg.camera.width, cfg.camera.height)


def sphere_record(sphere: Sphere) -> dict[str, float]:
    """Where a sphere lies as seen from the head (degrees, metres, pixels)."""
    return {
        "azimuth_deg": math.degrees(sphere.azimuth),
        "elevation_deg": math.degrees(sphere.elevation),
        "distance_m": float(sphere.distance),
        "pixel_x": float(sphere.pixel[0]),
        "pixel_y": float(sphere.pixel[1]),
    }


def render_binaural_scene(cfg: BinauralSceneConfig, seed: int, out_dir: Path, task: Task) -> dict[str, Any]:
    """Simulate one scene, write its files under ``out_dir`` and return its metadata row."""
    room_id, index = task
    room = draw_room(cfg.room, room_rng(seed, room_id))
    rng = sample_rng(seed, room_id, index)
    camera = camera_of(cfg)
    half = cfg.camera.fov_deg / 2 - cfg.sources.fov_margin_deg
    ranges = SphereRanges(
        azimuth=(-math.radians(half), math.radians(half)),
        elevation=(math.radians(cfg.sources.elevation_deg[0]), math.radians(cfg.sources.elevation_deg[1])),
        distance=(cfg.sources.distance_m[0], cfg.sources.distance_m[1]),
        radius=(cfg.sources.radius_m, cfg.sources.radius_m),
    )
    count = int(rng.integers(cfg.sources.min_count, cfg.sources.max_count + 1))
    pose, spheres = place_spheres(room, camera, ranges, count, cfg.room.wall_margin_m, rng)
    kinds = [str(k) for k in rng.choice(cfg.sources.classes, size=count)]

    head = make_head(cfg.head)
    n, n_ir = cfg.num_samples, max(1, round(cfg.ir_seconds * cfg.sample_rate))
    heard = []  # each source's binaural signal
    for sphere, kind in zip(spheres, kinds, strict=True):
        level = 10 ** (rng.uniform(*LEVEL_RANGE_DB) / 20)
        signal = level * source_signal(kind, rng, cfg.sample_rate, n + n_ir)
        ir = room_impulse_response(room, sphere.centre, pose, head, cfg.room.max_order, cfg.sample_rate, n_ir)
        heard.append(fftconvolve(signal[None], ir, axes=-1)[:, n_ir : n_ir + n])
    # the main source (first in the metadata) is the one with the most energy at the ears
    order = sorted(range(count), key=lambda i: -float(np.square(heard[i]).sum()))
    spheres, kinds = [spheres[i] for i in order], [kinds[i] for i in order]
    binaural = np.sum(heard, axis=0)
    binaural *= PEAK / max(float(np.abs(binaural).max()), 1e-12)

    rays = pose.to_world(camera.rays())
    centres = np.array([s.centre for s in spheres])
    hits = cast_rays(pose.position, rays, room.size, centres, np.array([s.radius for s in spheres]))

    name = sample_id("s", room_id, index, cfg.n_rooms, cfg.scenes_per_room)
    paths = {
        "binaural_path": f"binaural/{name}.wav",
        "mono_path": f"mono/{name}.wav",
        "frame_path": f"frames/{name}.png",
        "depth_path": f"depth/{name}.npy",
    }
    write_audio(out_dir / paths["binaural_path"], binaural, cfg.sample_rate)
    write_audio(out_dir / paths["mono_path"], binaural.mean(axis=0), cfg.sample_rate)
    Image.fromarray(render_frame(hits, rays, kinds)).save(out_dir / paths["frame_path"])
    np.save(out_dir / paths["depth_path"], hits.depth.astype(np.float32))

    sources = [{"class": kind, **sphere_record(s)} for s, kind in zip(spheres, kinds, strict=True)]
    return {
        "sample_id": name,
        "room_id": room_id,
        "scene_index": index,
        "sample_rate": cfg.sample_rate,
        "num_samples": n,
        **room_rows(room, pose),
        "n_sources": count,
        "source_class": kinds[0],
        **sphere_record(spheres[0]),
        "sources": json.dumps(sources),
        "depth_kind": "ray",
        **paths,
    }


def synthesize_binaural(cfg: BinauralSceneConfig, out_dir: Path, seed: int, workers: int) -> pd.DataFrame:
    """Simulate ``n_rooms * scenes_per_room`` binaural scenes into ``out_dir`` (atomically).

    Writes the audio, frames and depth maps plus ``scenes.parquet`` and returns that table.
    """
    make_head(cfg.head)  # fail early, in this process, on a missing or malformed SOFA file
    render = functools.partial(render_binaural_scene, cfg, seed)
    return generate(render, cfg.n_rooms, cfg.scenes_per_room, Path(out_dir), SUBDIRS, workers, "binaural scenes")
