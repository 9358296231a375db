"""Stage download@<name>: make registry dataset ``<name>`` available in data/raw/<name>.

One stage per key of the ``download`` section of params.yaml (empty in the synthetic pipelines, so
no stage exists there); the key's value holds that dataset's overrides of the registry (mirrors,
base_url, local_root). Without ``local_root`` every file of the registry entry is fetched through
the mirror list into data/raw/<name> (resumed, verified, unpacked: binaural_lab.data.download). The
folder is a ``persist`` output: a rerun after a params change or a kill keeps what was already
fetched, and the downloader skips every verified file, so nothing is downloaded twice.

With ``local_root`` nothing is downloaded: the registry's expected paths are checked there, and
data/raw/<name>/local_root.json records the folder with a fingerprint of its files (count, bytes,
newest modification time). DVC does not watch that folder: after changing the data there, run
`dvc repro --force download@<name>`; a changed fingerprint then reruns the stages downstream.

Logged to the stage's MLflow run: ``fetch_bytes`` (written to the folder by this run),
``fetch_seconds``, ``fetch_dataset_bytes`` (the downloads on disk) and the sha256 of each archive
unpacked; for a local root its file count and bytes.
"""

import sys
import time
from pathlib import Path

import typer

from binaural_lab import tracking
from binaural_lab.data import download
from binaural_lab.paths import raw_dir, write_json
from binaural_lab.stage import entry, load_params

LOCAL_ROOT = "local_root.json"


def fingerprint(root: Path) -> dict[str, int | float]:
    """File count, bytes and newest modification time below ``root`` (symbolic links followed)."""
    files = [p for p in root.rglob("*") if p.is_file()]
    stats = [p.stat() for p in files]
    return {
        "files": len(files),
        "bytes": sum(s.st_size for s in stats),
        "newest_mtime": max((s.st_mtime for s in stats), default=0.0),
    }


@entry
def main(name: str) -> None:
    params = load_params()
    spec = download.dataset_spec(name, params)
    root = raw_dir(name)
    run_params = {"dataset": name, "mirrors": spec.mirrors, "local_root": spec.local_root}
    with tracking.stage_run("data", f"download_{name}", run_params):
        if spec.local_root:
            local = download.fetch(spec, root)  # checks the expected paths there
            stamp = {"local_root": str(local), **fingerprint(local)}
            root.mkdir(parents=True, exist_ok=True)
            write_json(root / LOCAL_ROOT, stamp)
            tracking.log_metrics({"local_files": stamp["files"], "local_bytes": stamp["bytes"]})
            print(f"{name}: {stamp['files']} files, {stamp['bytes']} bytes in {local}", file=sys.stderr)
            return
        (root / LOCAL_ROOT).unlink(missing_ok=True)
        before = download.stored_bytes(spec, root)
        start = time.perf_counter()
        download.fetch(spec, root, progress=sys.stderr.isatty())
        seconds = time.perf_counter() - start
        on_disk = download.stored_bytes(spec, root)
        fetched = max(on_disk - before, 0)
        tracking.log_metrics({"fetch_bytes": fetched, "fetch_seconds": seconds, "fetch_dataset_bytes": on_disk})
        tracking.log_params({"sha256": download.unpacked_hashes(root)})
        print(f"{name}: fetched {fetched} bytes in {seconds:.1f} s into {root}", file=sys.stderr)


if __name__ == "__main__":
    typer.run(main)
