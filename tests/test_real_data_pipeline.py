"""The real-data chain end to end: Batvision V1 downloaded from a mirror, adapted, then the depth DAG.

A small Batvision V1 tree in the real layout (test_batvision's builder) is zipped as the registry's
archive and served by test_download's local HTTP server (Range support, a request log, cuts). A
temporary copy of the project (as test_pipeline does) runs the tiny params with ``datasets.echoes``
switched to batvision-v1 and ``download.batvision-v1.mirrors`` pointing at the server, so that
synthesize@echoes fetches the archive before adapting it.
"""

import io
import json
import shutil
import zipfile
from pathlib import Path

import mlflow
import pytest
import yaml
from test_batvision import make_v1
from test_download import server  # noqa: F401  (the fixture: a local HTTP server with Range support)
from test_pipeline import REPO, init_project, ran_stages, run

pytestmark = pytest.mark.slow

REGISTRY_NAME = "batvision-v1"
DATASET = "batvision-v1-echoes"
DEPTH_STAGES = {
    "synthesize@echoes",
    "prepare@echoes",
    "featurize@echoes",
    *(f"{verb}_depth@{m}" for verb in ("train", "evaluate") for m in ("unet", "base_residual", "binaural_attention")),
    "baseline_depth",
    "compare_depth",
}
MODELS = {"mean", "unet", "base_residual", "binaural_attention"}
ECHOES = {  # pipelines/batvision-v1.yaml's depth slot
    "name": DATASET,
    "kind": "batvision-v1",
    "source_root": None,
    "sample_rate": 44100,
    "max_depth_m": 12.0,
    "depth_kind": "planar",
    "published_splits": True,
    "cut_audio": False,
}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> bytes:
    """BatvisionV1.zip: BatvisionV1/{train,val,test}.csv, depth/ and audio/ (two samples a split)."""
    tree = tmp_path_factory.mktemp("batvision")
    base = make_v1(tree)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(base.rglob("*")):
            zf.write(path, path.relative_to(tree).as_posix())
    return buf.getvalue()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project in a fresh git + DVC repository, without params.yaml (each test writes it)."""
    return init_project(tmp_path_factory.mktemp("real-project"))


def serve(srv, archive: bytes) -> tuple[str, str]:
    """Serve the archive where the registry's path puts it below a mirror; return (mirror, request path)."""
    spec = yaml.safe_load((REPO / "src/binaural_lab/data/registry.yaml").read_text())["datasets"][REGISTRY_NAME]
    (entry,) = spec["files"]
    assert entry["name"] == "BatvisionV1.zip"
    path = f"/mirror/{entry['path']}"
    srv.files[path] = archive
    return f"{srv.url}/mirror", path


def write_params(project: Path, mirror: str) -> None:
    """The tiny params, the depth slot on Batvision V1 fetched from ``mirror``; the binaural slot stays synthetic."""
    params = yaml.safe_load((REPO / "pipelines/tiny.yaml").read_text())
    assert params["datasets"]["binaural"]["kind"] == "synthetic"
    params["datasets"]["echoes"] = dict(ECHOES)
    params["base"]["workers"] = 1  # six samples: a process pool costs more than it saves
    for model in params["depth_models"].values():  # the smallest run that still trains, evaluates, compares
        model["train"]["epochs"] = 1
        model["figure_every"] = 0
    params["download"] = {REGISTRY_NAME: {"mirrors": [mirror]}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def fetch_runs(project: Path):
    """The MLflow runs of synthesize_echoes, newest first."""
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["binaural-lab/data"], order_by=["start_time DESC"])
    return runs[runs["tags.mlflow.runName"] == "synthesize_echoes"]


def test_repro_fetches_once_adapts_and_compares_the_depth_models(project, server, archive):  # noqa: F811 (the imported fixture)
    mirror, path = serve(server, archive)
    write_params(project, mirror)
    out = run(["dvc", "repro", "compare_depth"], project).stdout
    assert ran_stages(out) == DEPTH_STAGES  # the depth chain only
    compare = json.loads((project / "reports/depth/compare.json").read_text())
    assert {r["model"] for r in compare["rows"]} == MODELS
    assert all(m in (project / "reports/depth/compare.md").read_text() for m in MODELS)
    assert server.log == [(path, None)]  # the archive, downloaded once
    download = project / "data/raw" / REGISTRY_NAME
    assert (download / "downloads/BatvisionV1.zip").read_bytes() == archive
    assert (download / "BatvisionV1/train.csv").is_file()
    assert len(list((project / "data/raw" / DATASET / "depth").glob("*.npy"))) == 6
    newest = fetch_runs(project).iloc[0]
    assert newest["metrics.fetch_bytes"] == len(archive) == newest["metrics.fetch_dataset_bytes"]
    assert newest["metrics.fetch_seconds"] >= 0 and newest["metrics.samples"] == 6
    assert newest["params.fetch.dataset"] == REGISTRY_NAME
    # everything in place: nothing reruns, nothing is requested
    out = run(["dvc", "repro", "compare_depth"], project).stdout
    assert ran_stages(out) == set()
    assert server.log == [(path, None)]


def test_a_cut_download_resumes_in_the_same_stage_run_and_a_rerun_requests_nothing(project, server, archive):  # noqa: F811 (the imported fixture)
    mirror, path = serve(server, archive)
    write_params(project, mirror)
    shutil.rmtree(project / "data/raw" / REGISTRY_NAME, ignore_errors=True)
    cut = len(archive) // 2
    server.cut[path] = cut  # the first answer stops after this many bytes
    out = run(["dvc", "repro", "--force", "--single-item", "synthesize@echoes"], project).stdout
    assert ran_stages(out) == {"synthesize@echoes"}
    assert server.log == [(path, None), (path, f"bytes={cut}-")]
    assert (project / "data/raw" / REGISTRY_NAME / "downloads/BatvisionV1.zip").read_bytes() == archive
    newest = fetch_runs(project).iloc[0]
    assert newest["metrics.fetch_bytes"] == len(archive) and newest["metrics.samples"] == 6
    # the stage rerun with the archive downloaded and unpacked: no request
    run(["dvc", "repro", "--force", "--single-item", "synthesize@echoes"], project)
    assert len(server.log) == 2
    newest = fetch_runs(project).iloc[0]
    assert newest["metrics.fetch_bytes"] == 0 and newest["metrics.fetch_dataset_bytes"] == len(archive)
