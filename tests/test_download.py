"""Downloads against a local HTTP server on 127.0.0.1 serving files the tests generate."""
from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from samstudy.models.download import (SAM_CHECKPOINTS, ChecksumError, DownloadError, RemoteFile, download_coco,
                                      download_file, download_sam_checkpoint)


class Server:
    """Serves ``files[path] = bytes``; options: honour Range or not, cut the body after N bytes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.honour_range = True
        self.cut_after: int | None = None
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append({"path": self.path, "range": rng})
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and server.honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body = body[:server.cut_after]
                server.requests[-1]["sent"] = len(body)
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def payload(server) -> tuple[str, bytes, str]:
    data = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    server.files["/weights/model.pth"] = data
    return server.url("/weights/model.pth"), data, hashlib.sha256(data).hexdigest()


def test_full_download_is_verified_and_renamed(payload, tmp_path):
    url, data, sha = payload
    dest = download_file(url, tmp_path / "w" / "model.pth", sha256=sha, expected_size=len(data), progress=False)
    assert dest.read_bytes() == data
    assert not (tmp_path / "w" / "model.pth.part").exists()
    assert json.loads((tmp_path / "w" / "model.pth.sha256").read_text())["sha256"] == sha
    # a second call verifies the existing file without touching the network
    assert download_file("http://127.0.0.1:9/unreachable", dest, sha256=sha, progress=False) == dest


def test_resume_requests_only_the_missing_bytes(payload, server, tmp_path):
    url, data, sha = payload
    dest = tmp_path / "model.pth"
    (tmp_path / "model.pth.part").write_bytes(data[:123_456])
    download_file(url, dest, sha256=sha, expected_size=len(data), progress=False)
    assert dest.read_bytes() == data
    assert server.requests[-1]["range"] == "bytes=123456-"
    assert server.requests[-1]["sent"] == len(data) - 123_456


def test_broken_transfer_keeps_the_part_file_and_resumes(payload, server, tmp_path):
    url, data, sha = payload
    dest = tmp_path / "model.pth"
    server.cut_after = 100_000
    with pytest.raises(DownloadError, match="run again to resume"):
        download_file(url, dest, sha256=sha, progress=False, timeout=5)
    assert (tmp_path / "model.pth.part").stat().st_size == 100_000 and not dest.exists()
    server.cut_after = None
    download_file(url, dest, sha256=sha, progress=False)
    assert dest.read_bytes() == data and server.requests[-1]["range"] == "bytes=100000-"


def test_server_ignoring_range_restarts_cleanly(payload, server, tmp_path):
    url, data, sha = payload
    server.honour_range = False
    dest = tmp_path / "model.pth"
    (tmp_path / "model.pth.part").write_bytes(b"stale bytes that must not stay in front")
    download_file(url, dest, sha256=sha, progress=False)
    assert dest.read_bytes() == data and server.requests[-1]["range"] is not None


def test_checksum_mismatch_raises_and_leaves_no_file(payload, tmp_path):
    url, data, sha = payload
    wrong = "0" * 64
    dest = tmp_path / "model.pth"
    with pytest.raises(ChecksumError) as err:
        download_file(url, dest, sha256=wrong, progress=False)
    msg = str(err.value)
    assert "model.pth" in msg and wrong in msg and sha in msg
    assert not dest.exists() and not (tmp_path / "model.pth.part").exists()
    dest.write_bytes(b"someone else's file")
    with pytest.raises(ChecksumError, match="delete it and run again"):
        download_file(url, dest, sha256=sha, progress=False)
    assert dest.read_bytes() == b"someone else's file"  # never deleted silently


def test_offline_error_says_where_to_put_the_file(tmp_path):
    with socket.socket() as s:  # a port with nobody listening: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "weights" / "sam_vit_b_01ec64.pth"
    sha = SAM_CHECKPOINTS["vit_b"][1]
    with pytest.raises(DownloadError) as err:
        download_file(f"http://127.0.0.1:{port}/sam_vit_b_01ec64.pth", dest, sha256=sha, progress=False, timeout=5)
    msg = str(err.value)
    assert "on a machine with internet access" in msg and str(dest) in msg and sha in msg


def test_http_error_is_reported(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url("/missing.bin"), tmp_path / "x.bin", progress=False)


def test_sam_checkpoint_table_and_unknown_model():
    for model, (url, sha, size) in SAM_CHECKPOINTS.items():
        assert url.startswith("https://dl.fbaipublicfiles.com/segment_anything/sam_" + model)
        assert len(sha) == 64 and int(sha, 16) >= 0 and size > 300_000_000
    with pytest.raises(ValueError, match="vit_b"):
        download_sam_checkpoint("vit_x", "unused")


def test_download_coco_extracts_atomically_and_skips_done_parts(server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("val2017/000000000139.jpg", b"jpeg bytes")
        zf.writestr("val2017/000000000285.jpg", b"more jpeg bytes")
    data = buf.getvalue()
    server.files["/zips/val2017.zip"] = data
    files = {"val2017": RemoteFile(server.url("/zips/val2017.zip"), len(data), md5=hashlib.md5(data).hexdigest())}
    out = download_coco(tmp_path / "coco", parts=("val2017",), progress=False, files=files)
    assert sorted(p.name for p in out["val2017"].iterdir()) == ["000000000139.jpg", "000000000285.jpg"]
    assert not [p for p in (tmp_path / "coco").iterdir() if "extracting" in p.name]
    n = len(server.requests)
    download_coco(tmp_path / "coco", parts=("val2017",), progress=False, files=files)
    assert len(server.requests) == n  # already done: no request
    with pytest.raises(ValueError, match="unknown COCO part"):
        download_coco(tmp_path / "coco", parts=("test2099",), files=files)
    with pytest.raises(ValueError, match=r"unknown COCO part\(s\) \['annotations'\]"):  # splits= adds annotations
        download_coco(tmp_path / "coco", splits=("val2017",), files=files)


def test_model_checkpoint_first_download_is_recorded_and_later_checked(server, tmp_path):
    """No published hash: the first download records size + SHA-256 with a warning; a changed file
    on the server is then refused, and a loaded file is checked against the record."""
    import warnings

    from samstudy.models.download import (FIRST_DOWNLOAD_RECORD, MODEL_CHECKPOINTS, UnverifiedDownloadWarning,
                                          download_model_checkpoint, official_checkpoint)
    data = np.random.default_rng(1).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    server.files["/w/mobile_sam.pt"] = data
    files = {"mobile_sam": RemoteFile(server.url("/w/mobile_sam.pt"))}
    with pytest.warns(UnverifiedDownloadWarning, match="no published checksum"):
        path = download_model_checkpoint("mobile_sam", tmp_path, progress=False, files=files)
    assert path.read_bytes() == data
    rec = json.loads((tmp_path / FIRST_DOWNLOAD_RECORD).read_text())["mobile_sam.pt"]
    assert rec["sha256"] == hashlib.sha256(data).hexdigest() and rec["size"] == len(data)
    assert official_checkpoint(path) == ("mobile_sam", rec["sha256"], len(data))
    path.unlink()
    server.files["/w/mobile_sam.pt"] = data[::-1]  # same size, other bytes
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnverifiedDownloadWarning)  # recorded now: no new warning
        with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
            download_model_checkpoint("mobile_sam", tmp_path, progress=False, files=files)
    assert set(MODEL_CHECKPOINTS) >= {"sam2.1_hiera_t", "sam2.1_hiera_b+", "sam_hq_vit_h", "mobile_sam",
                                      "efficientvit_sam_xl1"}
    assert all(s.url.startswith("https://") for s in MODEL_CHECKPOINTS.values())


def test_model_checkpoint_with_published_sha_is_verified_and_sam_names_delegate(server, tmp_path, monkeypatch):
    from samstudy.models import download as dl
    data = b"x" * 5000
    server.files["/w/m.pt"] = data
    good = {"m": RemoteFile(server.url("/w/m.pt"), len(data), sha256=hashlib.sha256(data).hexdigest())}
    assert dl.download_model_checkpoint("m", tmp_path, progress=False, files=good).read_bytes() == data
    bad = {"n": RemoteFile(server.url("/w/m.pt"), len(data), sha256="0" * 64)}
    with pytest.raises(ChecksumError):
        dl.download_model_checkpoint("n", tmp_path / "b", progress=False, files=bad)
    called = {}
    monkeypatch.setattr(dl, "download_sam_checkpoint", lambda m, d, progress=True: called.setdefault("m", m))
    dl.download_model_checkpoint("sam_vit_b", tmp_path)
    assert called["m"] == "vit_b"
    with pytest.raises(ValueError, match="unknown model checkpoint 'nope'.*mobile_sam"):
        dl.download_model_checkpoint("nope", tmp_path)
