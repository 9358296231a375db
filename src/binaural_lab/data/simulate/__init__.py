"""Physically simulated default datasets (no download needed).

* :func:`synthesize_binaural`: sources in shoebox rooms rendered at two ears (image-source method,
  spherical-head or SOFA HRTF model on every arrival), with a head-camera frame and depth map.
* :func:`synthesize_echoes`: a chirp emitted at the head, its binaural echoes, and the depth map a
  head camera would see of exactly the simulated geometry.

Coordinate conventions are documented in :mod:`binaural_lab.data.simulate.geometry`.
"""

from binaural_lab.data.simulate.binaural import synthesize_binaural
from binaural_lab.data.simulate.config import (
    BinauralSceneConfig,
    CameraConfig,
    ChirpConfig,
    EchoCameraConfig,
    EchoSceneConfig,
    HeadConfig,
    ObjectsConfig,
    RoomConfig,
    SourcesConfig,
)
from binaural_lab.data.simulate.echoes import synthesize_echoes

__all__ = [
    "BinauralSceneConfig",
    "CameraConfig",
    "ChirpConfig",
    "EchoCameraConfig",
    "EchoSceneConfig",
    "HeadConfig",
    "ObjectsConfig",
    "RoomConfig",
    "SourcesConfig",
    "synthesize_binaural",
    "synthesize_echoes",
]
