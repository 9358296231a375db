"""Every named real-data pipeline end to end: download, adapter, then its family's comparison.

Small trees in the real layouts (the builders of test_batvision, test_fairplay, test_realbinaural)
are packed as the registry's archives and served by test_download's local HTTP server (Range
support, a request log, cuts); RealBinaural, which has no public download, is a local root. A
temporary copy of the project runs the tiny params with the dataset slot and the ``download``
section of ``pipelines/<name>.yaml`` as shipped, only the mirrors (or the local root) pointed at the
test's data, so that ``dvc repro <compare>`` runs download@<name>, the adapter and every stage of
the family. A second repro reruns nothing and sends no request.
"""

import io
import json
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import soundfile as sf
import yaml
from test_batvision import make_v1, make_v2
from test_download import server  # noqa: F401  (the fixture: a local HTTP server with Range support)
from test_fairplay import make_fairplay
from test_pipeline import REPO, init_project, ran_stages, run
from test_realbinaural import make_realbinaural

from binaural_lab.data.shards import open_split

pytestmark = pytest.mark.slow

REGISTRY = yaml.safe_load((REPO / "src/binaural_lab/data/registry.yaml").read_text())["datasets"]
COMPARE = {"echoes": "compare_depth", "binaural": "compare_binaural"}
DEPTH_VERBS = {"train_depth", "evaluate_depth", "baseline_depth", "compare_depth"}


def is_depth_stage(stage: str) -> bool:
    """Whether a stage belongs to the depth family's chain (its data stages or its models)."""
    return stage.endswith("@echoes") or stage.split("@")[0] in DEPTH_VERBS


def _zip(tree: Path, base: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(base.rglob("*")):
            zf.write(path, path.relative_to(tree).as_posix())
    return buf.getvalue()


def _tar_gz(tree: Path, top: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(tree / top, arcname=top)
    return buf.getvalue()


def batvision_v1_archives(tree: Path) -> dict[str, bytes]:
    return {"BatvisionV1.zip": _zip(tree, make_v1(tree))}


def batvision_v2_archives(tree: Path) -> dict[str, bytes]:
    return {"BatvisionV2.zip": _zip(tree, make_v2(tree))}


def fairplay_archives(tree: Path) -> dict[str, bytes]:
    """FAIR-Play's three tarballs, with the first and the last clip of the real dataset (the registry expects both)."""
    root = make_fairplay(tree)
    return {f"{name}.tar.gz": _tar_gz(root, top) for name, top in FAIRPLAY_TARBALLS.items()}


FAIRPLAY_TARBALLS = {"splits": "splits", "audios": "binaural_audios", "videos": "videos"}


@dataclass(frozen=True)
class Case:
    slot: str
    archives: Callable[[Path], dict[str, bytes]] | None  # None: no public download, a local root


CASES = {
    "batvision-v1": Case("echoes", batvision_v1_archives),
    "batvision-v2": Case("echoes", batvision_v2_archives),
    "fairplay": Case("binaural", fairplay_archives),
    "realbinaural": Case("binaural", None),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project in a fresh git + DVC repository, without params.yaml (each test writes it)."""
    return init_project(tmp_path_factory.mktemp("real-project"))


def serve(srv, name: str, archives: dict[str, bytes]) -> tuple[str, list[str]]:
    """Serve the archives where the registry's paths put them below a mirror; return (mirror, request paths)."""
    entries = REGISTRY[name]["files"]
    assert sorted(e["name"] for e in entries) == sorted(archives)
    paths = []
    for entry in entries:
        path = f"/mirror/{entry.get('path') or entry['name']}"
        srv.files[path] = archives[entry["name"]]
        paths.append(path)
    return f"{srv.url}/mirror", paths


def write_params(project: Path, name: str, source: dict) -> dict:
    """The tiny params with ``pipelines/<name>.yaml``'s dataset slot and download entry, the entry's
    mirrors or local root replaced by ``source``; returns the slot."""
    params = yaml.safe_load((REPO / "pipelines/tiny.yaml").read_text())
    named = yaml.safe_load((REPO / "pipelines" / f"{name}.yaml").read_text())
    slot = CASES[name].slot
    params["datasets"][slot] = named["datasets"][slot]
    params["download"] = {name: {**(named["download"][name] or {}), **source}}
    params["base"]["workers"] = 1  # a few samples: a process pool costs more than it saves
    for model in params["depth_models"].values():  # the smallest run that still trains, evaluates, compares
        model["train"]["epochs"] = 1
        model["figure_every"] = 0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params["datasets"][slot]


def download_runs(project: Path, name: str):
    """The MLflow runs of download_<name>, newest first."""
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["binaural-lab/data"], order_by=["start_time DESC"])
    return runs[runs["tags.mlflow.runName"] == f"download_{name}"]


def check_features(project: Path, slot: dict) -> None:
    """Units that must survive the adapter: depth in metres, finite, non-negative; binaural frames and mels."""
    for split in ("train", "val", "test"):
        depth = open_split(project / "data/features" / slot["name"] / split)["depth"]
        assert np.isfinite(depth).all() and (depth >= 0).all()
        if slot.get("max_depth_m"):
            assert depth.max() <= slot["max_depth_m"] and depth.max() > 0


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.archives])
def test_repro_downloads_once_adapts_and_compares(project, server, name, tmp_path):  # noqa: F811 (the fixture)
    case = CASES[name]
    mirror, paths = serve(server, name, case.archives(tmp_path / "tree"))
    slot = write_params(project, name, {"mirrors": [mirror]})
    compare = COMPARE[case.slot]
    out = run(["dvc", "repro", compare], project).stdout
    stages = ran_stages(out)
    assert {f"download@{name}", f"synthesize@{case.slot}", f"featurize@{case.slot}", compare} <= stages
    family_stages = stages - {f"download@{name}"}
    assert all(is_depth_stage(s) == (case.slot == "echoes") for s in family_stages)  # that family's chain only
    assert sorted(server.log) == sorted((p, None) for p in paths)  # each archive, downloaded once
    family = "depth" if case.slot == "echoes" else "binaural"
    assert len(json.loads((project / "reports" / family / "compare.json").read_text())["rows"]) >= 4
    check_features(project, slot)
    newest = download_runs(project, name).iloc[0]
    total = sum(len(server.files[p]) for p in paths)
    assert newest["metrics.fetch_bytes"] == total == newest["metrics.fetch_dataset_bytes"]
    assert newest["params.dataset"] == name
    # everything in place: nothing reruns, nothing is requested
    assert ran_stages(run(["dvc", "repro", compare], project).stdout) == set()
    assert len(server.log) == len(paths)


def test_realbinaural_reads_a_local_root_and_compares(project, tmp_path):
    root = make_realbinaural(tmp_path / "copy")
    slot = write_params(project, "realbinaural", {"local_root": str(root)})
    out = run(["dvc", "repro", "compare_binaural"], project).stdout
    assert {"download@realbinaural", "synthesize@binaural", "compare_binaural"} <= ran_stages(out)
    stamp = json.loads((project / "data/raw/realbinaural/local_root.json").read_text())
    assert stamp["local_root"] == str(root) and stamp["files"] > 0
    check_features(project, slot)
    assert ran_stages(run(["dvc", "repro", "compare_binaural"], project).stdout) == set()
    # a changed copy: `dvc repro --force download@realbinaural` refreshes the fingerprint, the adapter reruns
    wav = sorted((root / "processed").rglob("*.wav"))[0]
    audio, rate = sf.read(wav)
    sf.write(wav, audio * 0.5, rate, subtype=sf.info(str(wav)).subtype)
    run(["dvc", "repro", "--force", "--single-item", "download@realbinaural"], project)
    assert "synthesize@binaural" in ran_stages(run(["dvc", "repro", "synthesize@binaural"], project).stdout)


def test_a_missing_local_root_is_named(project):
    write_params(project, "realbinaural", {})
    proc = run(["dvc", "repro", "download@realbinaural"], project, check=False)
    assert proc.returncode != 0
    assert "download.realbinaural.local_root" in proc.stdout + proc.stderr


def test_a_cut_download_resumes_in_the_same_stage_run_and_a_rerun_requests_nothing(project, server, tmp_path):  # noqa: F811 (the fixture)
    name = "batvision-v1"
    archives = CASES[name].archives(tmp_path / "tree")
    mirror, (path,) = serve(server, name, archives)
    write_params(project, name, {"mirrors": [mirror]})
    shutil.rmtree(project / "data/raw" / name, ignore_errors=True)
    (archive,) = archives.values()
    cut = len(archive) // 2
    server.cut[path] = cut  # the first answer stops after this many bytes
    out = run(["dvc", "repro", "--force", "--single-item", f"download@{name}"], project).stdout
    assert ran_stages(out) == {f"download@{name}"}
    assert server.log == [(path, None), (path, f"bytes={cut}-")]
    assert (project / "data/raw" / name / "downloads/BatvisionV1.zip").read_bytes() == archive
    newest = download_runs(project, name).iloc[0]
    assert newest["metrics.fetch_bytes"] == len(archive)
    # the stage rerun with the archive downloaded and unpacked: no request
    run(["dvc", "repro", "--force", "--single-item", f"download@{name}"], project)
    assert len(server.log) == 2
    newest = download_runs(project, name).iloc[0]
    assert newest["metrics.fetch_bytes"] == 0 and newest["metrics.fetch_dataset_bytes"] == len(archive)
