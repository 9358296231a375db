"""Datasets are params, not paths: the ``datasets`` section of params.yaml.

Each family reads its data through one slot of that section (the generation family through
``datasets.binaural``, the depth family through ``datasets.echoes``). A slot names the dataset,
which fixes its folders (``data/raw/<name>``, ``data/prepared/<name>``, ``data/features/<name>``,
templated into dvc.yaml as ``${datasets.<slot>.name}``), its kind and the facts that the stages
downstream need (sample rate, maximum depth, depth kind). Switching to a real dataset is a named
pipeline that fills the slot differently; no code or dvc.yaml changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from binaural_lab.config import ParamError, param, parse
from binaural_lab.data.simulate.config import DEPTH_KINDS
from binaural_lab.paths import features_dir, prepared_dir, raw_dir

SLOTS = ("binaural", "echoes")
KINDS = ("synthetic", "batvision-v1", "batvision-v2")  # FAIR-Play and RealBinaural adapters are to come
ECHO_KINDS = ("batvision-v1", "batvision-v2")  # real kinds of the depth slot (binaural_lab.data.batvision)
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass
class DatasetConfig:
    """One slot of the ``datasets`` section."""

    name: str = param(doc="folder name under data/raw, data/prepared and data/features")
    kind: str = param("synthetic", choices=KINDS, doc="where the raw data comes from")
    sample_rate: int = param(22050, ge=8000, le=192000, doc="audio sample rate of the raw data, Hz")
    max_depth_m: float | None = param(None, gt=0, doc="depth datasets: depths beyond are invalid")
    depth_kind: str | None = param(
        None, choices=(*DEPTH_KINDS, None), doc="planar (along the optical axis) or ray (along each ray)"
    )
    source_root: str | None = param(
        None,
        doc="real kinds: the unpacked dataset (relative: to the project); null: where `blab data fetch` puts it, "
        "data/raw/<registry name>/BatvisionV1 (V2), or below download.<registry name>.local_root",
    )
    published_splits: bool = param(
        True,
        doc="real kinds: keep the dataset's own train/val/test (Batvision V2's are per location, so every location "
        "is in every split); false: prepare draws room-disjoint splits (V2: by location; V1 has none)",
    )
    cut_audio: bool = param(
        True, doc="Batvision: keep the first 2 * max_depth_m / 340 s of each recording (the V2 loader's cut)"
    )

    def validate(self, where: str) -> None:
        if not _NAME.match(self.name):
            raise ParamError(f"{where}.name: {self.name!r} must be lower-case letters, digits, '.', '_' or '-'")
        if self.kind == "synthetic" and self.source_root is not None:
            raise ParamError(f"{where}.source_root: a synthetic dataset is simulated, not read from a folder")
        if self.kind in ECHO_KINDS and self.depth_kind not in (None, "planar"):
            raise ParamError(f"{where}.depth_kind: Batvision's depth (ZED stereo camera) is planar")

    @property
    def raw(self) -> Path:
        return raw_dir(self.name)

    @property
    def prepared(self) -> Path:
        return prepared_dir(self.name)

    @property
    def features(self) -> Path:
        return features_dir(self.name)


def dataset(params: Mapping[str, Any], slot: str) -> DatasetConfig:
    """The dataset in ``datasets.<slot>``; depth slots must say their maximum depth and depth kind."""
    if slot not in SLOTS:
        raise ParamError(f"datasets: {slot!r} is not one of {list(SLOTS)}")
    section = params.get("datasets")
    if not isinstance(section, Mapping) or slot not in section:
        raise ParamError(f"params.yaml: key 'datasets.{slot}' is missing (expected name, kind, sample_rate, ...)")
    cfg = parse(DatasetConfig, section[slot], f"datasets.{slot}")
    if cfg.kind in ECHO_KINDS and slot != "echoes":
        raise ParamError(f"datasets.{slot}.kind: {cfg.kind!r} is a depth dataset, for the slot 'echoes'")
    if slot == "echoes":
        for key in ("max_depth_m", "depth_kind"):
            if getattr(cfg, key) is None:
                raise ParamError(f"datasets.{slot}.{key}: required for a depth dataset")
    return cfg
