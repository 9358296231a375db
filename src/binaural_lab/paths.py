"""The one place that resolves where things live.

Processes meet through the file system (DVC stages, queued experiments under .dvc/tmp/exps, several
Optuna workers), so shared stores are resolved to absolute paths from the project root.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT_ENV = "BLAB_ROOT"


def project_root(start: Path | None = None) -> Path:
    """The directory holding params.yaml: $BLAB_ROOT, else the nearest parent of ``start`` (or cwd)."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).resolve()
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "params.yaml").is_file() or (candidate / "dvc.yaml").is_file():
            return candidate
    return here


def store_root(start: Path | None = None) -> Path:
    """Where the shared stores (mlruns/, tuning/) live: the project root, or, inside a queued or
    temporary DVC experiment (a copy under ``<project>/.dvc/tmp/exps/``), the original project's
    root, so every experiment writes to the one store."""
    root = project_root(start)
    parts = root.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def resolve(path: str | Path, root: Path | None = None) -> Path:
    """An absolute path; relative ones are taken from the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root or project_root()) / p


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it replaces ``target`` in one rename.

    Works for files and directories. On error the temporary is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.rmdir()  # the caller creates a file or a directory at this path
    try:
        yield tmp
        _fsync(tmp)
        if target.is_dir() and not target.is_symlink():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _fsync(path: Path) -> None:
    """Flush a file, or every file below a directory, to disk before the rename publishes it."""
    files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_files(paths: list[Path], pattern: str = "*") -> str:
    """A short sha256 of files (or of the files matching ``pattern`` below a directory), in path order.

    Each file's name and bytes are hashed; the bytes are read in 1 MiB chunks, so large shards do not
    have to fit in memory."""
    digest = hashlib.sha256()
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(f for f in p.rglob(pattern) if f.is_file()) if p.is_dir() else [p])
    for f in files:
        if f.exists():
            digest.update(f.name.encode())
            with f.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def nested(a: str | Path, b: str | Path) -> bool:
    """Whether folder ``a`` is ``b``, or one of them lies inside the other (after resolving both)."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or a in b.parents or b in a.parents


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (indent 2, keys in insertion order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def raw_dir(dataset: str) -> Path:
    """``data/raw/<dataset>``: the downloaded or synthesized files of a dataset (named in params)."""
    return project_root() / "data" / "raw" / dataset


def prepared_dir(dataset: str) -> Path:
    return project_root() / "data" / "prepared" / dataset


def features_dir(dataset: str) -> Path:
    return project_root() / "data" / "features" / dataset


def model_dir(family: str, name: str) -> Path:
    return project_root() / "models" / family / name


def report_dir(family: str, name: str | None = None) -> Path:
    base = project_root() / "reports" / family
    return base / name if name else base


def output_dir(family: str, name: str) -> Path:
    """``outputs/<family>/<name>``: what a trained method generates (WAV files per split, ...)."""
    return project_root() / "outputs" / family / name
