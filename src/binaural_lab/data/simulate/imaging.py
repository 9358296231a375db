"""Shading of ray-cast views into RGB frames.

Each room surface has its own colour (the floor a tiled pattern), each sound source a class-specific
colour and texture. Brightness falls with the distance along the ray and with the angle between the
ray and the surface normal (a light at the camera), so the frame carries depth cues.
"""

from __future__ import annotations

import numpy as np

from binaural_lab.data.simulate.geometry import SURFACES, RayHits

SURFACE_COLOURS = {
    "x0": (0.72, 0.52, 0.48),
    "x1": (0.50, 0.66, 0.52),
    "y0": (0.50, 0.56, 0.76),
    "y1": (0.78, 0.72, 0.46),
    "floor": (0.55, 0.40, 0.28),
    "ceiling": (0.88, 0.88, 0.84),
}
SOURCE_COLOURS = {
    "harmonic": (0.92, 0.18, 0.16),
    "plucked": (0.98, 0.76, 0.08),
    "percussive": (0.14, 0.36, 0.96),
    "voice": (0.16, 0.82, 0.30),
}
FLOOR_TILE_M = 0.5


def _texture(kind: str, normal: np.ndarray) -> np.ndarray:
    """Brightness pattern on a source sphere from its outward normal ``[P, 3]``."""
    latitude = np.arcsin(np.clip(normal[:, 2], -1, 1))
    longitude = np.arctan2(normal[:, 1], normal[:, 0])
    if kind == "harmonic":
        dark = np.sin(10 * latitude) > 0
    elif kind == "plucked":
        dark = np.sin(8 * longitude) > 0
    elif kind == "percussive":
        dark = (np.sin(6 * latitude) > 0) ^ (np.sin(6 * longitude) > 0)
    else:
        dark = np.cos(12 * latitude) * np.cos(12 * longitude) > 0.5
    return np.where(dark, 0.6, 1.0)


def render_frame(hits: RayHits, rays: np.ndarray, kinds: list[str]) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` of a ray-cast view; ``kinds`` names the class of sphere k."""
    surface = hits.surface.ravel()
    normal = hits.normal.reshape(-1, 3)
    point = hits.point.reshape(-1, 3)
    colour = np.zeros((surface.size, 3))
    pattern = np.ones(surface.size)
    for index, name in enumerate(SURFACES):
        colour[surface == index] = SURFACE_COLOURS[name]
    floor = surface == SURFACES.index("floor")
    tiles = np.floor(point[floor, :2] / FLOOR_TILE_M).astype(int).sum(axis=1) % 2
    pattern[floor] = np.where(tiles == 0, 1.0, 0.8)
    for k, kind in enumerate(kinds):
        on_sphere = surface == len(SURFACES) + k
        colour[on_sphere] = SOURCE_COLOURS[kind]
        pattern[on_sphere] = _texture(kind, normal[on_sphere])
    facing = np.abs(np.sum(normal * rays.reshape(-1, 3), axis=1))
    shade = (0.35 + 0.65 * facing) / (1 + 0.08 * hits.depth.ravel())
    rgb = colour * (pattern * shade)[:, None]
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8).reshape(*hits.depth.shape, 3)
