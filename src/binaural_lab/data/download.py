"""Fetch the real datasets: checksummed, resumable downloads with mirror failover and safe unpacking.

``registry.yaml`` next to this module says, per dataset, which files come from which mirrors, their
sha256 and size where known, and which paths must exist once the data is in place. params.yaml may
override three things per dataset, under ``download.<name>``: ``mirrors`` (replaces the registry's
list), ``base_url`` (a mirror tried before the others, such as a lab copy) and ``local_root`` (the
dataset is already on disk there: nothing is downloaded, the expected paths are checked).

Only the standard library moves the bytes. pooch, the usual choice, cannot resume an interrupted
download with an HTTP ``Range`` request (it starts again from zero) and cannot fail over from one
mirror to the next; both matter for FAIR-Play's 100 GB from hosts whose links die (REFERENCE §6).

A fetched dataset folder ``<root>`` holds:

- ``downloads/<name>.part`` while a file downloads, renamed to ``downloads/<name>`` once its size
  and sha256 check out; a plain (non-archive) file goes to ``<root>/<name>`` instead;
- what the archives unpack to: each archive is unpacked into a temporary folder, and only when all
  of it unpacked are its top-level entries renamed into ``<root>`` (or ``<root>/<extract_to>``);
- ``checksums.json``: the sha256 and size recorded on the first download of a file the registry has
  no hash for; later downloads must match the record;
- ``.fetched.json``: which archive was unpacked from which sha256 into which entries, so that a
  second fetch with everything in place downloads and unpacks nothing.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import ssl
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from binaural_lab.config import ParamError, UserError, load_yaml, param, parse
from binaural_lab.paths import resolve, write_json

REGISTRY = Path(__file__).with_name("registry.yaml")
FAMILIES = ("binaural", "echoes")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
DOWNLOADS = "downloads"
CHECKSUMS = "checksums.json"
FETCHED = ".fetched.json"
USER_AGENT = "binaural-lab/0.1 (dataset fetch)"
_CHUNK = 1 << 16
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_URL = re.compile(r"^(https?|file)://", re.IGNORECASE)
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


class DownloadError(UserError):
    """A dataset could not be fetched, verified or unpacked; the message names the file and why."""


class ChecksumError(DownloadError):
    """A download's size or sha256 differs from the registry's or the recorded value."""


class ArchiveError(DownloadError):
    """An archive is damaged, or holds a member that must not be unpacked."""


class _Transient(Exception):
    """A failure worth retrying on the same URL (5xx, a cut connection)."""


class _Refused(Exception):
    """A failure that retrying the same URL will not mend (404, 403): try the next one."""


_RETRYABLE = (_Transient, urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError)


def _check_url(url: str, key: str) -> None:
    if not _URL.match(url):
        raise ParamError(f"{key}: {url!r} is not an http://, https:// or file:// URL")


def _unsafe_reason(name: str, link: str | None = None, *, hard: bool = False) -> str | None:
    """Why an archive member ``name`` (a link to ``link``) must not be unpacked; None when it may.

    The check is on the names alone: no absolute path, no ``..`` component, no link whose target
    leaves the destination (a symlink's target is relative to its folder, a hard link's to the root).
    """
    if PurePosixPath(name).is_absolute() or _DRIVE.match(name):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' in its path"
    if link is None:
        return None
    if PurePosixPath(link).is_absolute() or _DRIVE.match(link):
        return f"link to the absolute path {link!r}"
    parts = [] if hard else list(PurePosixPath(name).parent.parts)
    for part in PurePosixPath(link).parts:
        if part != "..":
            parts.append(part)
        elif parts:
            parts.pop()
        else:
            return f"link to {link!r}, outside the destination"
    return None


@dataclass
class FileSpec:
    """One file of a dataset, as the registry lists it."""

    name: str = param(doc="local file name; also its path below each mirror unless `path` is set")
    path: str | None = param(None, doc="path (and query) below each mirror URL where it differs from name")
    sha256: str | None = param(None, doc="published or verified sha256; null: recorded on the first download")
    size: int | None = param(None, ge=0, doc="size in bytes; null where not known")
    extract_to: str = param(".", doc="archives: folder below the dataset folder to unpack into")

    def validate(self, where: str) -> None:
        if self.name in ("", ".", "..", DOWNLOADS, CHECKSUMS, FETCHED) or "/" in self.name:
            raise ParamError(f"{where}.name: {self.name!r} must be a plain file name")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ParamError(f"{where}.sha256: expected 64 lower-case hex digits or null, got {self.sha256!r}")
        reason = _unsafe_reason(self.extract_to)
        if reason:
            raise ParamError(f"{where}.extract_to: {self.extract_to!r} must stay below the dataset folder ({reason})")

    @property
    def is_archive(self) -> bool:
        return self.name.lower().endswith(ARCHIVE_SUFFIXES)

    def local_path(self, root: Path) -> Path:
        """Where the file is kept below the dataset folder: ``downloads/<name>`` for an archive."""
        return root / DOWNLOADS / self.name if self.is_archive else root / self.name


@dataclass
class DatasetSpec:
    """One dataset of the registry, with the overrides of params.yaml applied."""

    name: str = param(doc="registry key; the default download folder is data/raw/<name>")
    title: str = param()
    family: str = param(choices=FAMILIES, doc="the model family that reads it")
    adapter: str = param(doc="the adapter that turns its raw files into the prepared layout")
    license: str = param()
    homepage: str | None = param(None)
    mirrors: list[str] = param([], doc="base URLs, tried in order")
    files: list[FileSpec] = param([])
    expect: list[str] = param([], doc="paths that must exist below the dataset folder once fetched")
    local_root: str | None = param(None, doc="a folder that already holds the dataset: nothing is downloaded")

    def validate(self, where: str) -> None:
        for i, url in enumerate(self.mirrors):
            _check_url(url, f"{where}.mirrors[{i}]")
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ParamError(f"{where}.files: file names must be unique, got {names}")
        for i, path in enumerate(self.expect):
            reason = _unsafe_reason(path)
            if reason:
                raise ParamError(f"{where}.expect[{i}]: {path!r} must be relative to the dataset folder ({reason})")

    def urls(self, f: FileSpec) -> list[str]:
        """The URLs of ``f``, one per mirror, in the mirrors' order."""
        return [f"{m.rstrip('/')}/{(f.path or f.name).lstrip('/')}" for m in self.mirrors]


@dataclass
class Overrides:
    """``download.<name>`` in params.yaml: where to get one dataset, instead of the registry's answer."""

    mirrors: list[str] | None = param(None, doc="base URLs that replace the registry's mirrors, tried in order")
    base_url: str | None = param(None, doc="a base URL tried before the mirrors (a lab copy or cache)")
    local_root: str | None = param(None, doc="folder that already holds the dataset (relative: to the project)")

    def validate(self, where: str) -> None:
        if self.mirrors is not None and not self.mirrors:
            raise ParamError(f"{where}.mirrors: empty list; leave the key out to keep the registry's mirrors")
        for i, url in enumerate(self.mirrors or []):
            _check_url(url, f"{where}.mirrors[{i}]")
        if self.base_url is not None:
            _check_url(self.base_url, f"{where}.base_url")
        if self.local_root == "":
            raise ParamError(f"{where}.local_root: empty path; leave the key out to download")


def load_registry(path: Path = REGISTRY) -> dict[str, DatasetSpec]:
    """Every dataset of the registry file, validated (a bad entry raises ParamError naming its key)."""
    datasets = load_yaml(path).get("datasets")
    if not isinstance(datasets, Mapping) or not datasets:
        raise ParamError(f"{path}: expected a mapping 'datasets' of dataset names to their entries")
    specs = {}
    for name, entry in datasets.items():
        where = f"{path.name}: datasets.{name}"
        if not isinstance(entry, Mapping):
            raise ParamError(f"{where}: expected a mapping, got {type(entry).__name__}")
        specs[name] = parse(DatasetSpec, {**entry, "name": name}, where)
    return specs


def spec_for_adapter(adapter: str, params: Mapping[str, Any] | None = None) -> DatasetSpec:
    """The registry dataset read by ``adapter`` (a ``datasets.<slot>.kind``), with its overrides."""
    names = [name for name, spec in load_registry().items() if spec.adapter == adapter]
    if not names:
        raise ParamError(f"kind {adapter!r}: no dataset of {REGISTRY} has this adapter")
    return dataset_spec(names[0], params)


def dataset_spec(name: str, params: Mapping[str, Any] | None = None, registry: Path = REGISTRY) -> DatasetSpec:
    """Dataset ``name`` of the registry, with its overrides from ``params["download"][name]``."""
    specs = load_registry(registry)
    if name not in specs:
        raise ParamError(f"dataset {name!r} is not in {registry}; known datasets: {sorted(specs)}")
    section = (params or {}).get("download")
    if section is None:
        return specs[name]
    if not isinstance(section, Mapping):
        raise ParamError(f"download: expected a mapping of dataset names to overrides, got {type(section).__name__}")
    unknown = sorted(set(section) - set(specs))
    if unknown:
        raise ParamError(f"download: unknown dataset(s) {unknown}; the registry has {sorted(specs)}")
    overrides = parse(Overrides, section.get(name), f"download.{name}")
    spec = specs[name]
    mirrors = list(spec.mirrors if overrides.mirrors is None else overrides.mirrors)
    if overrides.base_url:
        mirrors = [overrides.base_url, *(m for m in mirrors if m != overrides.base_url)]
    local_root = str(resolve(overrides.local_root)) if overrides.local_root else spec.local_root
    return dataclasses.replace(spec, mirrors=mirrors, local_root=local_root)


def sha256sum(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _content_range(headers: Message) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``Content-Range: bytes A-B/T`` (or ``bytes */T``) header."""
    match = _CONTENT_RANGE.fullmatch((headers.get("Content-Range") or "").strip())
    if not match:
        return None, None
    first, total = match.groups()
    return (int(first) if first else None), (None if total == "*" else int(total))


def _transfer(url: str, part: Path, size: int | None, timeout: float, progress: bool) -> None:
    """One request for ``url``: append to ``part`` from where it stops, or rewrite it from byte 0.

    Raises _Transient on a 5xx, a range the server cannot honour or a body shorter than its
    Content-Length (http.client returns empty bytes on a cut connection instead of raising), and
    _Refused on other HTTP errors.
    """
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None and have == size:
        return
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={have}-"} if have else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have and _content_range(exc.headers)[1] == have:
            return  # the partial file is already the whole file
        if exc.code == 416:
            part.unlink(missing_ok=True)
            raise _Transient(f"HTTP 416 for bytes {have}-: restarting from byte 0") from exc
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from exc
        raise _Refused(f"HTTP {exc.code} {exc.reason}") from exc
    with response:
        if response.status == 206:
            first = _content_range(response.headers)[0]
            if first != have:
                part.unlink(missing_ok=True)
                raise _Transient(f"asked for bytes {have}- and got {response.headers.get('Content-Range')!r}")
            mode = "ab"
        else:  # 200 (the server ignored Range) or a file:// URL: the whole file follows
            have, mode = 0, "wb"
        header = response.headers.get("Content-Length")
        length = int(header) if header and header.isdigit() else None
        total = have + length if length is not None else size
        got = 0
        with (
            part.open(mode) as fh,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while chunk := response.read(_CHUNK):
                fh.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    if length is not None and got < length:
        raise _Transient(f"connection cut after {have + got} of {total} bytes")


def _try_url(
    url: str, part: Path, size: int | None, retries: int, backoff: float, timeout: float, progress: bool
) -> str | None:
    """Download ``url`` into ``part``, retrying transient failures; None on success, else why it failed."""
    error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _transfer(url, part, size, timeout, progress)
            return None
        except _Refused as exc:
            return str(exc)
        except _RETRYABLE as exc:
            error = str(exc) if isinstance(exc, _Transient) else f"{type(exc).__name__}: {exc}"
    return f"{error} (gave up after {retries + 1} attempts)"


def _checked(part: Path, name: str, url: str, sha256: str | None, size: int | None, source: str) -> str:
    """The sha256 of the complete download ``part``; on a size or hash mismatch ``part`` is removed."""
    received, digest = part.stat().st_size, sha256sum(part)
    if (size is not None and received != size) or (sha256 is not None and digest != sha256):
        part.unlink()
        raise ChecksumError(
            f"{name}: checksum mismatch for the download from {url}: expected sha256 {sha256 or '(unknown)'} "
            f"({source}) and {size if size is not None else 'any'} bytes, received sha256 {digest} and "
            f"{received} bytes; the partial download was removed and nothing was unpacked"
        )
    return digest


def download(
    urls: list[str],
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    source: str = "registry",
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 30.0,
    progress: bool = True,
) -> tuple[str, str]:
    """Download ``dest`` from the first of ``urls`` that serves it; return (that URL, its sha256).

    The bytes go to ``<dest>.part``. A partial file left by an earlier attempt or run is resumed
    with ``Range: bytes=N-``; a server that answers 200 instead of 206 rewrites it from the start.
    A 5xx, a timeout, a refused or cut connection is retried ``retries`` times on the same URL,
    waiting ``backoff * 2**k`` seconds, before the next URL; other HTTP errors (404, 403) move to
    the next URL at once. The partial file is kept across URLs: mirrors serve the same bytes, and
    the checks below catch one that does not. Once complete, its size and sha256 are checked against
    ``size`` and ``sha256`` (where given; ``source`` says where the hash comes from) and it is
    renamed to ``dest``; on a mismatch it is removed and ChecksumError names the file, the URL and
    both values.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = []
    for url in urls:
        error = _try_url(url, part, size, retries, backoff, timeout, progress)
        if error is None:
            digest = _checked(part, dest.name, url, sha256, size, source)
            os.replace(part, dest)
            return url, digest
        failures.append(f"{url}: {error}")
    kept = f"\n{part} ({part.stat().st_size} bytes) is kept and resumed next time" if part.exists() else ""
    tried = "\n  ".join(failures) or "(no mirror to try)"
    raise DownloadError(f"{dest.name}: no mirror could serve it:\n  {tried}{kept}")


def _safe_tar_members(tar: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    """The members of ``tar`` as it streams, refusing (ArchiveError naming it) any unsafe one."""
    for member in tar:
        link = member.linkname if member.issym() or member.islnk() else None
        reason = _unsafe_reason(member.name, link, hard=member.islnk())
        if reason is None and (member.ischr() or member.isblk() or member.isfifo()):
            reason = "a device or fifo"
        if reason:
            raise ArchiveError(f"{archive}: refusing member {member.name!r}: {reason}; nothing was unpacked")
        yield member


def _untar(archive: Path, out: Path) -> None:
    mode = "r:" if archive.name.lower().endswith(".tar") else "r:gz"
    with tarfile.open(archive, mode) as tar:
        tar.extractall(out, members=_safe_tar_members(tar, archive), filter="data")
        # tarfile stops at the end-of-archive block; gzip checks its CRC and length only at the end
        # of the stream, so read it to the end to catch a flipped bit that still inflates
        while tar.fileobj.read(1 << 20):
            pass


def _inside(root: str, path: Path) -> bool:
    """Whether ``path``, with every symlink resolved, is ``root`` or below it."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


def _unzip(archive: Path, out: Path) -> None:
    root = os.path.realpath(out)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = out / info.filename
            link = zf.read(info).decode("utf-8", "surrogateescape") if stat.S_ISLNK(info.external_attr >> 16) else None
            reason = _unsafe_reason(info.filename, link)
            if reason is None and not _inside(root, target.parent / link if link else target):
                reason = "it would land outside the destination through a symlink"
            if reason:
                raise ArchiveError(f"{archive}: refusing member {info.filename!r}: {reason}; nothing was unpacked")
            if link is None:
                zf.extract(info, out)  # checks each member's CRC-32
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(link, target)


def _publish(tmp: Path, dest: Path, entries: list[str]) -> None:
    """Rename each top-level entry of ``tmp`` into ``dest``, replacing an older one of that name."""
    replaced = Path(tempfile.mkdtemp(prefix=".replaced.", dir=dest))
    try:
        for entry in entries:
            target, old = dest / entry, replaced / entry
            if os.path.lexists(target):
                target.rename(old)
            try:
                (tmp / entry).rename(target)
            except OSError:
                if os.path.lexists(old):
                    old.rename(target)
                raise
    finally:
        shutil.rmtree(replaced, ignore_errors=True)


def extract(archive: Path, dest: Path, taken: Mapping[str, str] | None = None) -> list[str]:
    """Unpack a .tar, .tar.gz/.tgz or .zip ``archive`` into ``dest``; return its top-level entries.

    A member with an absolute path, a ``..`` component, a link leading outside ``dest``, or a
    device is refused with an ArchiveError naming it; so is a damaged or truncated archive. The
    archive is unpacked into a temporary folder inside ``dest``; only once all of it unpacked are its
    top-level entries renamed into ``dest``, each replacing an older entry of that name, except the
    names in ``taken`` (name -> what holds it), which are refused. On any error the temporary folder
    is removed and ``dest`` is left as it was.
    """
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".tmp", dir=dest))
    try:
        try:
            if archive.name.lower().endswith(".zip"):
                _unzip(archive, tmp)
            else:
                _untar(archive, tmp)
        except tarfile.FilterError as exc:
            raise ArchiveError(f"{archive}: refusing member {exc.tarinfo.name!r}: {exc}; nothing was unpacked") from exc
        except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise ArchiveError(
                f"{archive}: damaged or truncated archive ({type(exc).__name__}: {exc}); nothing was unpacked"
            ) from exc
        entries = sorted(p.name for p in tmp.iterdir())
        clashes = {e: (taken or {})[e] for e in entries if e in (taken or {})}
        if clashes:
            raise ArchiveError(f"{archive}: its top-level entries would replace {clashes}; nothing was unpacked")
        _publish(tmp, dest, entries)
        return entries
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DownloadError(f"{path}: not valid JSON ({exc}); delete it to start over") from exc
    if not isinstance(data, dict):
        raise DownloadError(f"{path}: expected a JSON object; delete it to start over")
    return data


def _expected(f: FileSpec, root: Path) -> tuple[str | None, int | None, str]:
    """(sha256, size, where the hash comes from) of ``f``: the registry's, else the recorded ones."""
    recorded = _read_json(root / CHECKSUMS).get(f.name, {})
    size = f.size if f.size is not None else recorded.get("size")
    if f.sha256:
        return f.sha256, size, "registry"
    return recorded.get("sha256"), size, f"recorded in {root / CHECKSUMS}"


def _unpacked(f: FileSpec, root: Path, sha256: str | None) -> bool:
    """Whether archive ``f`` with hash ``sha256`` is unpacked into ``root`` and its entries still exist."""
    marker = _read_json(root / FETCHED).get(f.name)
    return (
        sha256 is not None
        and marker is not None
        and marker.get("sha256") == sha256
        and PurePosixPath(marker.get("extract_to", ".")) == PurePosixPath(f.extract_to)
        and all(os.path.lexists(root / f.extract_to / e) for e in marker.get("entries", []))
    )


def _taken(spec: DatasetSpec, f: FileSpec, root: Path) -> dict[str, str]:
    """Top-level names in ``f``'s destination that its archive must not replace."""
    taken = {}
    if PurePosixPath(f.extract_to) == PurePosixPath("."):
        taken = {n: "the fetch's own bookkeeping" for n in (DOWNLOADS, CHECKSUMS, FETCHED)}
        taken |= {g.name: f"the downloaded file {g.name}" for g in spec.files if not g.is_archive}
    for other, marker in _read_json(root / FETCHED).items():
        if other != f.name and PurePosixPath(marker.get("extract_to", ".")) == PurePosixPath(f.extract_to):
            taken |= {e: f"what {other} unpacked" for e in marker.get("entries", [])}
    return taken


def _record(root: Path, name: str, digest: str, size: int, url: str | None) -> None:
    """Record the sha256 of a file the registry has no hash for, and say so loudly."""
    path = root / CHECKSUMS
    data = _read_json(path)
    data[name] = {"sha256": digest, "size": size, "url": url}
    write_json(path, data)
    rule = "!" * 78
    print(
        f"{rule}\nWARNING: the registry has no sha256 for {name}; recorded the one of this download\n"
        f"  {digest} ({size} bytes, from {url or 'an earlier download'})\n"
        f"in {path}. Later downloads must match it. Compare it with a value the dataset's authors\n"
        f"publish, if any, and put it into {REGISTRY}.\n{rule}",
        file=sys.stderr,
    )


def _fetch_file(spec: DatasetSpec, f: FileSpec, root: Path, net: Mapping[str, Any]) -> None:
    """Download, verify and (an archive) unpack one file, unless it is already in place."""
    sha256, size, source = _expected(f, root)
    if f.is_archive and _unpacked(f, root, sha256):
        return
    target = f.local_path(root)
    on_disk = target.is_file() and (size is None or target.stat().st_size == size)
    if on_disk and (sha256 is None or sha256sum(target) == sha256):
        url, digest = None, sha256 or sha256sum(target)
    else:
        target.unlink(missing_ok=True)
        url, digest = download(spec.urls(f), target, sha256=sha256, size=size, source=source, **net)
        print(f"{f.name}: {target.stat().st_size} bytes from {url}", file=sys.stderr)
    entries = None
    if f.is_archive:
        try:
            entries = extract(target, root / f.extract_to, _taken(spec, f, root))
        except ArchiveError:
            if sha256 is None:
                target.unlink()  # an unverified download that does not unpack is not worth keeping
            raise
    if sha256 is None:
        _record(root, f.name, digest, target.stat().st_size, url)
    if entries is not None:
        state = _read_json(root / FETCHED)
        state[f.name] = {"sha256": digest, "extract_to": f.extract_to, "entries": entries}
        write_json(root / FETCHED, state)


def check_expected(spec: DatasetSpec, root: Path) -> None:
    """Raise DownloadError naming every path of ``spec.expect`` missing below ``root``."""
    if not root.is_dir():
        raise DownloadError(f"{spec.name}: {root} does not exist or is not a folder")
    missing = [str(root / p) for p in spec.expect if not os.path.lexists(root / p)]
    if missing:
        raise DownloadError(f"{spec.name}: expected path(s) missing: {', '.join(missing)}")


def fetch(
    spec: DatasetSpec,
    root: Path,
    *,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Make ``spec``'s data available and return the folder that holds it.

    With ``local_root`` nothing is downloaded and that folder is returned once the expected paths
    are found in it. Otherwise each file is downloaded into ``root`` (see :func:`download` for
    ``retries``, ``backoff``, ``timeout`` and ``progress``), verified and, for an archive, unpacked;
    a file already in place (a plain file whose size and sha256 match, an archive unpacked from the
    expected sha256) is skipped, so a second call downloads nothing.
    """
    if spec.local_root:
        check_expected(spec, Path(spec.local_root))
        return Path(spec.local_root)
    if not spec.files:
        raise ParamError(
            f"download.{spec.name}.local_root: {spec.name} has no public download; set it to a folder that holds "
            f"the dataset ({', '.join(spec.expect)})"
        )
    if not spec.mirrors:
        raise ParamError(f"download.{spec.name}.mirrors: no mirror to download {spec.name} from")
    root = Path(root)
    net = {"retries": retries, "backoff": backoff, "timeout": timeout, "progress": progress}
    for f in spec.files:
        _fetch_file(spec, f, root, net)
    check_expected(spec, root)
    return root


def stored_bytes(spec: DatasetSpec, root: Path) -> int:
    """Bytes of ``spec``'s downloads kept below ``root``, partial ones included (unpacked trees not counted)."""
    paths = [p for f in spec.files for p in (f.local_path(root), f.local_path(root).with_name(f.name + ".part"))]
    return sum(p.stat().st_size for p in paths if p.is_file())


def unpacked_hashes(root: Path) -> dict[str, str]:
    """The sha256 each archive under ``root`` was unpacked from, by file name."""
    return {name: entry.get("sha256", "") for name, entry in _read_json(root / FETCHED).items()}


def verify(spec: DatasetSpec, root: Path) -> list[str]:
    """Check a fetched (or local) dataset without downloading; return one line per file checked.

    Every file still on disk is hashed against the registry's or the recorded sha256, every
    archive must be unpacked from that sha256 with its entries in place, and the expected paths
    must exist. Raises DownloadError listing every problem.
    """
    if spec.local_root:
        check_expected(spec, Path(spec.local_root))
        return [f"{spec.name}: {len(spec.expect)} expected path(s) found in {spec.local_root}"]
    root = Path(root)
    if not root.is_dir():
        raise DownloadError(f"{spec.name}: {root} does not exist; run `blab data fetch {spec.name}` first")
    lines, problems = [], []
    for f in spec.files:
        sha256, _, source = _expected(f, root)
        target = f.local_path(root)
        if sha256 is None:
            problems.append(f"{f.name}: no sha256 in the registry nor in {root / CHECKSUMS}")
            continue
        if f.is_archive and not _unpacked(f, root, sha256):
            problems.append(f"{f.name}: not unpacked from sha256 {sha256}, or its entries are gone")
        if target.is_file():
            digest = sha256sum(target)
            if digest == sha256:
                lines.append(f"{f.name}: sha256 {digest} ok ({source})")
            else:
                problems.append(f"{target}: sha256 {digest}, expected {sha256} ({source})")
        elif f.is_archive:
            lines.append(f"{f.name}: unpacked from sha256 {sha256} (the archive itself was removed)")
        else:
            problems.append(f"{target}: missing")
    try:
        check_expected(spec, root)
    except DownloadError as exc:
        problems.append(str(exc))
    if problems:
        raise DownloadError(f"{spec.name}: verification failed:\n  " + "\n  ".join(problems))
    return lines
