"""Dataset downloads against a local HTTP server: resume, retries, failover, checksums, safe unpacking."""

import hashlib
import io
import json
import re
import socket
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from typer.testing import CliRunner

from binaural_lab.cli import app
from binaural_lab.config import ParamError
from binaural_lab.data import download as dl
from binaural_lab.data.download import (
    ArchiveError,
    ChecksumError,
    DatasetSpec,
    DownloadError,
    FileSpec,
    dataset_spec,
    extract,
    fetch,
    load_registry,
    verify,
)

FAST = {"retries": 2, "backoff": 0.01, "timeout": 2.0, "progress": False}


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files`` with Range support and the faults configured on the server."""

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        srv = self.server
        path, ranged = self.path, self.headers.get("Range")
        srv.log.append((path, ranged))
        if srv.stall.get(path):
            srv.stall[path] -= 1
            time.sleep(srv.stall_s)
        if srv.fail.get(path):
            srv.fail[path] -= 1
            self.send_error(503)
            return
        body = srv.files.get(path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if ranged and path not in srv.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", ranged)[1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = srv.cut.pop(path, None)  # one-shot: send only this many bytes, then close
        try:
            self.wfile.write(body[start:] if cut is None else body[start : start + cut])
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on a stalled answer
            pass


@pytest.fixture
def server():
    """A local HTTP/1.0 server; ``server.url`` is its base, ``server.log`` lists (path, Range header)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.log, srv.cut, srv.fail, srv.stall, srv.ignore_range = {}, [], {}, {}, {}, set()
    srv.stall_s = 0.0
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def sleeps(monkeypatch):
    """Record the backoff waits instead of sleeping."""
    waits = []
    monkeypatch.setattr(dl.time, "sleep", waits.append)
    return waits


def _tar_gz(files=None, symlinks=None, hardlinks=None):
    """A small .tar.gz: ``files`` name -> bytes, ``symlinks``/``hardlinks`` name -> target."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (files or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for links, kind in ((symlinks, tarfile.SYMTYPE), (hardlinks, tarfile.LNKTYPE)):
            for name, target in (links or {}).items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, target
                tar.addfile(info)
    return buf.getvalue()


def _zip(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _payload(n=6000, seed=0):
    """Incompressible bytes, so the archive is about as large as its content."""
    return b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(n // 32 + 1))[:n]


def _spec(mirrors, files, expect=()):
    return DatasetSpec(
        name="toy",
        title="toy",
        family="binaural",
        adapter="toy",
        license="CC0",
        mirrors=list(mirrors),
        files=list(files),
        expect=list(expect),
    )


def _serve(server, name, data, mirror="m1"):
    server.files[f"/{mirror}/{name}"] = data
    return f"{server.url}/{mirror}"


def _flip(data, at):
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def _dead_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone"


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_full_download_verifies_unpacks_and_places_plain_files(server, tmp_path):
    payload = _payload()
    archive = _tar_gz({"data/a.bin": payload, "data/b.txt": b"b"})
    mirror = _serve(server, "toy.tar.gz", archive)
    _serve(server, "meta.csv", b"x,y\n1,2\n")
    files = [
        FileSpec("toy.tar.gz", sha256=_sha(archive), size=len(archive)),
        FileSpec("meta.csv", sha256=_sha(b"x,y\n1,2\n")),
    ]
    root = fetch(_spec([mirror], files, ["data/a.bin", "meta.csv"]), tmp_path / "toy", **FAST)
    assert (root / "data/a.bin").read_bytes() == payload and (root / "meta.csv").read_bytes() == b"x,y\n1,2\n"
    assert (root / "downloads/toy.tar.gz").read_bytes() == archive
    assert not list(root.rglob("*.part")) and not list(root.glob(".*.tmp"))
    assert server.log == [("/m1/toy.tar.gz", None), ("/m1/meta.csv", None)]
    assert not (root / "checksums.json").exists()  # every hash came from the registry


def test_resumes_a_cut_download_with_a_range_request(server, tmp_path, sleeps):
    archive = _tar_gz({"a.bin": _payload()})
    mirror = _serve(server, "toy.tar.gz", archive)
    server.cut["/m1/toy.tar.gz"] = 1000
    root = fetch(_spec([mirror], [FileSpec("toy.tar.gz", sha256=_sha(archive))]), tmp_path / "toy", **FAST)
    assert server.log == [("/m1/toy.tar.gz", None), ("/m1/toy.tar.gz", "bytes=1000-")]
    assert (root / "downloads/toy.tar.gz").read_bytes() == archive and sleeps == [0.01]


def test_resumes_a_partial_file_of_an_earlier_run_restarts_when_range_is_ignored(server, tmp_path):
    data = _payload(5000)
    url = _serve(server, "f.bin", data) + "/f.bin"
    part = tmp_path / "f.bin.part"
    part.write_bytes(data[:1234])
    dl.download([url], tmp_path / "f.bin", sha256=_sha(data), **FAST)
    assert server.log == [("/m1/f.bin", "bytes=1234-")] and (tmp_path / "f.bin").read_bytes() == data
    server.ignore_range.add("/m1/f.bin")  # answers 200 with the whole file: the partial is rewritten
    (tmp_path / "g.bin.part").write_bytes(b"junk" * 100)
    dl.download([url], tmp_path / "g.bin", sha256=_sha(data), **FAST)
    assert server.log[-1] == ("/m1/f.bin", "bytes=400-") and (tmp_path / "g.bin").read_bytes() == data
    server.ignore_range.clear()  # a partial file that is already whole: 416 with the total size, kept
    (tmp_path / "h.bin.part").write_bytes(data)
    dl.download([url], tmp_path / "h.bin", sha256=_sha(data), **FAST)
    assert server.log[-1] == ("/m1/f.bin", "bytes=5000-") and (tmp_path / "h.bin").read_bytes() == data


def test_retries_503_with_exponential_backoff(server, tmp_path, sleeps):
    data = _payload(3000)
    url = _serve(server, "f.bin", data) + "/f.bin"
    server.fail["/m1/f.bin"] = 3
    dl.download([url], tmp_path / "f.bin", sha256=_sha(data), **{**FAST, "retries": 4, "backoff": 0.5})
    assert sleeps == [0.5, 1.0, 2.0] and len(server.log) == 4
    assert (tmp_path / "f.bin").read_bytes() == data


def test_retries_a_timeout(server, tmp_path):
    data = _payload(3000)
    url = _serve(server, "f.bin", data) + "/f.bin"
    server.stall["/m1/f.bin"], server.stall_s = 1, 1.0
    dl.download([url], tmp_path / "f.bin", sha256=_sha(data), **{**FAST, "timeout": 0.2})
    assert (tmp_path / "f.bin").read_bytes() == data and len(server.log) == 2


def test_fails_over_to_the_next_mirror(server, tmp_path, sleeps):
    archive = _tar_gz({"a.bin": _payload()})
    good = _serve(server, "toy.tar.gz", archive, mirror="good")
    mirrors = [_dead_url(), f"{server.url}/missing", good]
    root = fetch(_spec(mirrors, [FileSpec("toy.tar.gz", sha256=_sha(archive))]), tmp_path / "toy", **FAST)
    assert (root / "a.bin").is_file()
    assert server.log == [("/missing/toy.tar.gz", None), ("/good/toy.tar.gz", None)]  # no retries on a 404
    assert len(sleeps) == FAST["retries"]  # the refused connection was retried


def test_every_mirror_failing_names_each_with_its_reason(server, tmp_path, sleeps):
    server.fail["/busy/f.bin"] = 99
    dead, busy, missing = _dead_url(), f"{server.url}/busy/f.bin", f"{server.url}/missing/f.bin"
    with pytest.raises(DownloadError) as err:
        dl.download([dead, busy, missing], tmp_path / "f.bin", **FAST)
    message = str(err.value)
    assert message.startswith("f.bin: no mirror could serve it") and f"{dead}: URLError" in message
    assert f"{busy}: HTTP 503 Service Unavailable (gave up after 3 attempts)" in message
    assert f"{missing}: HTTP 404" in message and len(server.log) == 4


def test_checksum_mismatch_names_file_mirror_and_both_hashes(server, tmp_path):
    archive = _tar_gz({"a.bin": _payload()})
    served = _flip(archive, len(archive) // 2)
    mirror = _serve(server, "toy.tar.gz", served)
    root = tmp_path / "toy"
    with pytest.raises(ChecksumError) as err:
        fetch(_spec([mirror], [FileSpec("toy.tar.gz", sha256=_sha(archive))]), root, **FAST)
    message = str(err.value)
    assert "toy.tar.gz" in message and f"{mirror}/toy.tar.gz" in message
    assert _sha(archive) in message and _sha(served) in message
    assert _tree(root) == ["downloads"]  # no partial file, no final file, nothing unpacked


def test_size_mismatch_is_an_error(server, tmp_path):
    data = _payload(2000)
    url = _serve(server, "f.bin", data) + "/f.bin"
    with pytest.raises(ChecksumError, match=r"and 1999 bytes, received sha256 [0-9a-f]{64} and 2000 bytes"):
        dl.download([url], tmp_path / "f.bin", size=1999, **FAST)
    assert list(tmp_path.iterdir()) == []


def _damaged():
    archive = _tar_gz({"data/a.bin": _payload()})
    return {
        "truncated tar.gz": ("toy.tar.gz", archive[: len(archive) // 2]),
        "flipped tar.gz body": ("toy.tar.gz", _flip(archive, len(archive) // 2)),
        "flipped gzip CRC": ("toy.tar.gz", _flip(archive, len(archive) - 6)),
        "truncated zip": ("toy.zip", _zip({"data/a.bin": _payload()})[:-30]),
        "flipped zip body": ("toy.zip", _flip(_zip({"data/a.bin": _payload()}), 2000)),
    }


@pytest.mark.parametrize("case", list(_damaged()))
def test_damaged_archive_is_an_error_and_unpacks_nothing(server, tmp_path, case):
    name, data = _damaged()[case]
    mirror = _serve(server, name, data)
    root = tmp_path / "toy"
    with pytest.raises(ArchiveError, match=r"damaged or truncated archive") as err:
        fetch(_spec([mirror], [FileSpec(name)]), root, **FAST)  # no hash known: only unpacking can tell
    assert name in str(err.value)
    assert _tree(root) == ["downloads"]  # the unverified download was dropped, no hash recorded


def _evil():
    return {
        "traversal": ("evil.tar.gz", _tar_gz({"../x": b"x"}), "../x"),
        "absolute": ("evil.tar.gz", _tar_gz({"/abs/x": b"x"}), "/abs/x"),
        "symlink outside": ("evil.tar.gz", _tar_gz({"ok": b"1"}, symlinks={"data/link": "../../outside"}), "data/link"),
        "absolute symlink": ("evil.tar.gz", _tar_gz(symlinks={"link": "/etc/passwd"}), "link"),
        "hardlink outside": ("evil.tar.gz", _tar_gz(hardlinks={"hard": "../x"}), "hard"),
        "zip traversal": ("evil.zip", _zip({"a/../../x": b"x"}), "a/../../x"),
    }


@pytest.mark.parametrize("case", list(_evil()))
def test_unsafe_member_is_refused_and_earlier_data_is_untouched(server, tmp_path, case):
    name, data, member = _evil()[case]
    good = _tar_gz({"data/a.txt": b"first"})
    mirror = _serve(server, "good.tar.gz", good)
    _serve(server, name, data)
    root = tmp_path / "toy"
    files = [FileSpec("good.tar.gz", sha256=_sha(good)), FileSpec(name, sha256=_sha(data))]
    with pytest.raises(ArchiveError) as err:
        fetch(_spec([mirror], files), root, **FAST)
    assert f"refusing member {member!r}" in str(err.value) and name in str(err.value)
    assert (root / "data/a.txt").read_bytes() == b"first"
    assert _tree(root) == [
        ".fetched.json",
        "data",
        "data/a.txt",
        "downloads",
        f"downloads/{name}",
        "downloads/good.tar.gz",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # nothing landed outside


def test_archive_replacing_another_archives_entry_is_refused(tmp_path):
    (tmp_path / "a.tar.gz").write_bytes(_tar_gz({"data/a.txt": b"a"}))
    (tmp_path / "b.tar.gz").write_bytes(_tar_gz({"data/b.txt": b"b"}))
    dest = tmp_path / "out"
    assert extract(tmp_path / "a.tar.gz", dest) == ["data"]
    with pytest.raises(ArchiveError, match=r"would replace .*what a.tar.gz unpacked"):
        extract(tmp_path / "b.tar.gz", dest, {"data": "what a.tar.gz unpacked"})
    assert _tree(dest) == ["data", "data/a.txt"]


def test_unknown_hash_is_recorded_then_enforced(server, tmp_path, capsys):
    first = _tar_gz({"data/a.bin": _payload(seed=1)})
    mirror = _serve(server, "toy.tar.gz", first)
    root, spec = tmp_path / "toy", _spec([mirror], [FileSpec("toy.tar.gz")], ["data/a.bin"])
    fetch(spec, root, **FAST)
    recorded = json.loads((root / "checksums.json").read_text())["toy.tar.gz"]
    assert recorded["sha256"] == _sha(first) and recorded["size"] == len(first)
    err = capsys.readouterr().err
    assert "WARNING" in err and _sha(first) in err
    # later: the download and its marker are gone and the mirror now serves other bytes
    (root / "downloads/toy.tar.gz").unlink()
    (root / ".fetched.json").unlink()
    second = _tar_gz({"data/a.bin": _payload(seed=2)})
    server.files["/m1/toy.tar.gz"] = second
    with pytest.raises(ChecksumError) as exc:
        fetch(spec, root, **FAST)
    assert _sha(first) in str(exc.value) and _sha(second) in str(exc.value) and "checksums.json" in str(exc.value)
    assert (root / "data/a.bin").read_bytes() == _payload(seed=1)  # the unpacked tree is untouched


def test_second_fetch_downloads_nothing_and_verify_catches_a_changed_file(server, tmp_path):
    archive = _tar_gz({"data/a.bin": _payload()})
    mirror = _serve(server, "toy.tar.gz", archive)
    _serve(server, "meta.csv", b"m")
    spec = _spec([mirror], [FileSpec("toy.tar.gz"), FileSpec("meta.csv", sha256=_sha(b"m"))], ["data/a.bin"])
    root = tmp_path / "toy"
    fetch(spec, root, **FAST)
    requests = list(server.log)
    fetch(spec, root, **FAST)
    assert server.log == requests and len(requests) == 2
    assert len(verify(spec, root)) == 2
    (root / "downloads/toy.tar.gz").write_bytes(_flip(archive, 100))
    with pytest.raises(DownloadError, match=r"toy.tar.gz: sha256 .* expected " + _sha(archive)):
        verify(spec, root)


def test_local_root_downloads_nothing_and_names_a_missing_path(server, tmp_path):
    local = tmp_path / "copy"
    (local / "data").mkdir(parents=True)
    (local / "data/a.bin").write_bytes(b"a")
    spec = _spec([f"{server.url}/m1"], [FileSpec("toy.tar.gz")], ["data/a.bin", "data/b.bin"])
    spec.local_root = str(local)
    with pytest.raises(DownloadError, match=re.escape(str(local / "data/b.bin"))):
        fetch(spec, tmp_path / "toy", **FAST)
    (local / "data/b.bin").write_bytes(b"b")
    assert fetch(spec, tmp_path / "toy", **FAST) == local
    assert server.log == [] and not (tmp_path / "toy").exists()


def test_registry_lists_the_four_datasets_without_invented_hashes():
    specs = load_registry()
    assert sorted(specs) == ["batvision-v1", "batvision-v2", "fairplay", "realbinaural"]
    assert {n: s.family for n, s in specs.items()} == {
        "batvision-v1": "echoes",
        "batvision-v2": "echoes",
        "fairplay": "binaural",
        "realbinaural": "binaural",
    }
    assert specs["realbinaural"].mirrors == [] and specs["realbinaural"].files == []
    assert [f.name for f in specs["fairplay"].files] == ["splits.tar.gz", "audios.tar.gz", "videos.tar.gz"]
    assert specs["fairplay"].urls(specs["fairplay"].files[1]) == [
        "http://dl.fbaipublicfiles.com/FAIR-Play/audios.tar.gz"
    ]
    assert all(f.sha256 is None for s in specs.values() for f in s.files)


def test_overrides_from_params(tmp_path, monkeypatch):
    monkeypatch.setenv("BLAB_ROOT", str(tmp_path))
    spec = dataset_spec("fairplay", {"download": {"fairplay": {"base_url": "https://lab.example/fp/"}}})
    assert spec.mirrors == ["https://lab.example/fp/", "http://dl.fbaipublicfiles.com/FAIR-Play"]
    spec = dataset_spec("fairplay", {"download": {"fairplay": {"mirrors": ["file:///mnt/fp"], "local_root": "d"}}})
    assert spec.mirrors == ["file:///mnt/fp"] and spec.local_root == str(tmp_path / "d")
    assert dataset_spec("fairplay", {"other": 1}).mirrors == ["http://dl.fbaipublicfiles.com/FAIR-Play"]


@pytest.mark.parametrize(
    ("download", "message"),
    [
        ({"fairplay": {"mirrors": "https://x"}}, r"download\.fairplay\.mirrors: expected a list"),
        ({"fairplay": {"mirrors": ["ftp://x"]}}, r"download\.fairplay\.mirrors\[0\]: 'ftp://x' is not an http"),
        ({"fairplay": {"mirrors": []}}, r"download\.fairplay\.mirrors: empty list"),
        ({"fairplay": {"base_url": "x"}}, r"download\.fairplay\.base_url: 'x' is not"),
        ({"fairplay": {"local_root": 3}}, r"download\.fairplay\.local_root: expected a string"),
        ({"fairplay": {"mirror": []}}, r"download\.fairplay: unknown key\(s\) \['mirror'\]"),
        ({"fair-play": {}}, r"download: unknown dataset\(s\) \['fair-play'\]"),
        ([1], r"download: expected a mapping"),
    ],
)
def test_bad_overrides_name_the_key(download, message):
    with pytest.raises(ParamError, match=message):
        dataset_spec("fairplay", {"download": download})


def test_registry_errors_name_the_entry(tmp_path):
    bad = {"datasets": {"toy": {"title": "t", "family": "echoes", "adapter": "a", "license": "l"}}}
    bad["datasets"]["toy"]["files"] = [{"name": "a.zip", "sha256": "abc"}]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ParamError, match=r"r\.yaml: datasets\.toy\.files\[0\]\.sha256: expected 64"):
        load_registry(tmp_path / "r.yaml")
    with pytest.raises(ParamError, match=r"dataset 'nope' is not in"):
        dataset_spec("nope")


def test_cli_fetch_and_verify_a_local_root(tmp_path, monkeypatch):
    monkeypatch.setenv("BLAB_ROOT", str(tmp_path))
    runner = CliRunner()
    result = runner.invoke(app, ["data", "fetch", "realbinaural"])
    assert result.exit_code == 2 and "download.realbinaural.local_root" in result.output
    copy = tmp_path / "rb"
    for path in load_registry()["realbinaural"].expect:
        (copy / path).parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".csv"):
            (copy / path).write_text("")
        else:
            (copy / path).mkdir()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"download": {"realbinaural": {"local_root": "rb"}}}))
    result = runner.invoke(app, ["data", "fetch", "realbinaural"])
    assert result.exit_code == 0 and f"ready in {copy}" in result.output
    result = runner.invoke(app, ["data", "verify", "realbinaural"])
    assert result.exit_code == 0 and "realbinaural: ok" in result.output
