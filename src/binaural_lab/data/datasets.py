"""Datasets are params, not paths: the ``datasets`` section of params.yaml.

Each family reads its data through one slot of that section (the generation family through
``datasets.binaural``, the depth family through ``datasets.echoes``). A slot names the dataset,
which fixes its folders (``data/raw/<name>``, ``data/prepared/<name>``, ``data/features/<name>``,
templated into dvc.yaml as ``${datasets.<slot>.name}``), its kind and the facts that the stages
downstream need (sample rate, maximum depth, depth kind). Switching to a real dataset is a named
pipeline that fills the slot differently; no code or dvc.yaml changes.

A real kind (Batvision V1 / V2 for the depth slot, FAIR-Play and RealBinaural for the generation
slot) is adapted from the files of its registry dataset (``registry.yaml``), which stage
download@<registry name> puts in data/raw/<registry name>; ``input`` names that folder, the
dependency dvc.yaml gives synthesize@<slot> (for a synthetic slot: the simulator's code).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from binaural_lab.config import ParamError, param, parse
from binaural_lab.data.download import spec_for_adapter
from binaural_lab.data.simulate.config import DEPTH_KINDS
from binaural_lab.paths import features_dir, prepared_dir, raw_dir

SLOTS = ("binaural", "echoes")
ECHO_KINDS = ("batvision-v1", "batvision-v2")  # real kinds of the depth slot (binaural_lab.data.batvision)
BINAURAL_KINDS = ("fairplay", "realbinaural")  # real kinds of the generation slot (data.fairplay, data.realbinaural)
KINDS = ("synthetic", *ECHO_KINDS, *BINAURAL_KINDS)
SIMULATOR_INPUT = "src/binaural_lab/data/simulate"  # what a synthetic slot is made from
SPLIT_SETS = {"official": 10, "pseudobinaural": 5}  # FAIR-Play's split sets and how many splits each has
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass
class DatasetConfig:
    """One slot of the ``datasets`` section."""

    name: str = param(doc="folder name under data/raw, data/prepared and data/features")
    kind: str = param("synthetic", choices=KINDS, doc="where the raw data comes from")
    input: str = param(
        SIMULATOR_INPUT,
        doc="what synthesize reads, a dependency in dvc.yaml: the simulator's code for a synthetic slot, the folder "
        "of stage download@<registry name> (data/raw/<registry name>) for a real one",
    )
    sample_rate: int = param(22050, ge=8000, le=192000, doc="audio sample rate of the raw data, Hz")
    max_depth_m: float | None = param(None, gt=0, doc="depth datasets: depths beyond are invalid")
    depth_kind: str | None = param(
        None, choices=(*DEPTH_KINDS, None), doc="planar (along the optical axis) or ray (along each ray)"
    )
    published_splits: bool = param(
        True,
        doc="real kinds: keep the dataset's own train/val/test (Batvision V2's are per location, so every location "
        "is in every split); false: prepare draws room-disjoint splits (V2: by location; V1 has none)",
    )
    cut_audio: bool = param(
        True, doc="Batvision: keep the first 2 * max_depth_m / 340 s of each recording (the V2 loader's cut)"
    )
    split_set: str = param(
        "official", choices=tuple(SPLIT_SETS), doc="FAIR-Play: the 10 official splits or PseudoBinaural's 5 new ones"
    )
    split: int = param(1, ge=1, doc="FAIR-Play: which split of split_set")
    segment_seconds: float | None = param(
        None, gt=0, doc="FAIR-Play, RealBinaural: recordings cut into samples of this length; null: one per recording"
    )
    fps: float = param(10.0, gt=0, doc="FAIR-Play, RealBinaural: the frame grid a sample's frame is picked on")

    def validate(self, where: str) -> None:
        if not _NAME.match(self.name):
            raise ParamError(f"{where}.name: {self.name!r} must be lower-case letters, digits, '.', '_' or '-'")
        expected = self.expected_input()
        if self.input != expected:
            raise ParamError(f"{where}.input: kind {self.kind!r} reads {expected!r}, got {self.input!r}")
        if self.kind in ECHO_KINDS and self.depth_kind not in (None, "planar"):
            raise ParamError(f"{where}.depth_kind: Batvision's depth (ZED stereo camera) is planar")
        if self.kind == "fairplay" and self.split > SPLIT_SETS[self.split_set]:
            raise ParamError(
                f"{where}.split: {self.split_set} has splits 1 to {SPLIT_SETS[self.split_set]}, got {self.split}"
            )

    def expected_input(self) -> str:
        """``input`` as the kind requires it (the real kinds' registry dataset fixes its download folder)."""
        if self.kind == "synthetic":
            return SIMULATOR_INPUT
        return f"data/raw/{self.registry_name}"

    @property
    def registry_name(self) -> str:
        """The registry dataset that a real kind is adapted from."""
        return spec_for_adapter(self.kind).name

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
    if cfg.kind in BINAURAL_KINDS and slot != "binaural":
        raise ParamError(f"datasets.{slot}.kind: {cfg.kind!r} is a binaural dataset, for the slot 'binaural'")
    if slot == "echoes":
        for key in ("max_depth_m", "depth_kind"):
            if getattr(cfg, key) is None:
                raise ParamError(f"datasets.{slot}.{key}: required for a depth dataset")
    return cfg
