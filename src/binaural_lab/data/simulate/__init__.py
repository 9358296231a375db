"""Physically simulated default datasets (no download needed).

* :func:`synthesize_binaural`: sources in shoebox rooms rendered at two ears (image-source method,
  spherical-head or SOFA HRTF model on every arrival), with a head-camera frame and depth map.
* :func:`synthesize_echoes`: a chirp emitted at the head, its binaural echoes, and the depth map a
  head camera would see of exactly the simulated geometry.

Coordinate conventions are documented in :mod:`binaural_lab.data.simulate.geometry`.

Names are imported on first use, so that reading a config (every stage does, through
``binaural_lab.data.datasets``) does not load the simulators and SciPy's signal package.
"""

import importlib
from typing import Any

_MODULES = {
    "synthesize_binaural": "binaural",
    "synthesize_echoes": "echoes",
    **{
        name: "config"
        for name in (
            "BinauralSceneConfig",
            "CameraConfig",
            "ChirpConfig",
            "EchoCameraConfig",
            "EchoSceneConfig",
            "HeadConfig",
            "ObjectsConfig",
            "RoomConfig",
            "SourcesConfig",
        )
    },
}

__all__ = sorted(_MODULES)


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
