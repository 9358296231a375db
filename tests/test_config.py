"""Typed params: wrong types, out-of-range values, unknown and missing keys name the key."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from binaural_lab.config import ParamError, flatten, load_yaml, param, parse
from binaural_lab.data.datasets import SLOTS, dataset


@dataclass
class Inner:
    rate: float = param(0.5, gt=0, lt=1)
    sizes: list[int] = param([1, 2], ge=1)


@dataclass
class Outer:
    name: str
    epochs: int = param(3, ge=1)
    mode: str = param("a", choices=("a", "b"))
    limit: float | None = param(None, gt=0)
    inner: Inner = field(default_factory=Inner)


def test_parse_fills_defaults_and_nested():
    cfg = parse(Outer, {"name": "x", "inner": {"rate": 0.25}}, "stage")
    assert cfg.epochs == 3 and cfg.inner.rate == 0.25 and cfg.inner.sizes == [1, 2]


def test_int_is_accepted_as_float_but_not_the_reverse():
    assert parse(Inner, {"rate": 0.5}, "s").rate == 0.5
    with pytest.raises(ParamError, match=r"stage\.epochs: expected an integer, got float 2\.5"):
        parse(Outer, {"name": "x", "epochs": 2.5}, "stage")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "epochs": 0}, r"stage\.epochs: 0 is out of range, expected a value >= 1"),
        ({"name": "x", "epochs": "many"}, r"stage\.epochs: expected an integer, got str"),
        ({"name": "x", "epochs": True}, r"stage\.epochs: expected an integer"),
        ({"name": "x", "mode": "c"}, r"stage\.mode: 'c' is not one of \['a', 'b'\]"),
        ({"name": "x", "inner": {"rate": 1.5}}, r"stage\.inner\.rate: 1\.5 is out of range"),
        ({"name": "x", "inner": {"sizes": [1, 0]}}, r"stage\.inner\.sizes\[1\]: 0 is out of range"),
        ({"name": "x", "limit": -1}, r"stage\.limit: -1\.0 is out of range"),
        ({"name": "x", "epoch": 3}, r"stage: unknown key\(s\) \['epoch'\]; allowed keys are"),
        ({}, r"stage\.name: required key is missing"),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ParamError, match=message):
        parse(Outer, data, "stage")


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ParamError, match="params.yaml: not valid YAML"):
        load_yaml(bad)
    with pytest.raises(ParamError, match="missing.yaml: file not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": 2}) == {"a.b": 1, "a.c": [1, 2], "d": 2}


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "pipelines").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_named_pipeline_fills_both_slots_and_downloads_what_they_read(path):
    params = load_yaml(path)
    read = set()
    for slot in SLOTS:
        data = dataset(params, slot)
        if data.kind != "synthetic":
            read.add(data.registry_name)
            assert data.input == f"data/raw/{data.registry_name}"
            assert data.name != data.registry_name  # the adapter's output is not the download it reads
    assert set(params["download"]) == read  # one download stage per real dataset, none unused
