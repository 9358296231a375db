"""What decides whether a checkpoint may be resumed: hashes of the training code and of data files."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from binaural_lab.paths import hash_files

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# the code that decides what a checkpoint holds; edits elsewhere (cli, stages, docs) keep it resumable
CODE_DIRS = ("models", "losses", "diffusion", "training")


def code_fingerprint(root: Path | None = None) -> str:
    """Hash of the ``.py`` files below the CODE_DIRS (models, losses, diffusion, training) of the package at
    ``root`` (by default this installed package)."""
    root = PACKAGE_ROOT if root is None else Path(root)
    return hash_files([root / d for d in CODE_DIRS], "*.py")


def content_hash(paths: Iterable[str | Path]) -> str:
    """Hash of the bytes of ``paths``: files, or every file below a directory (e.g. a directory of
    feature shards), in sorted path order, read in chunks. A missing path raises FileNotFoundError."""
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"cannot hash missing paths: {missing}")
    return hash_files(paths)
