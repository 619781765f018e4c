"""The default-weights downloader against a local HTTP server: verify, convert, cache, refuse."""

import hashlib
import http.server
import os
import socket
import struct
import threading

import numpy as np
import pytest

from nst_jax.errors import UserInputError, WeightsFileError
from nst_jax.weights.params_file import load_params
from nst_jax.weights import fetch as fetch_module
from nst_jax.weights.fetch import default_params_path, download, fetch, format_progress
from weights_tools.fetch import main
from weights_tools.synthetic import write_synthetic

KERAS_NAME = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"


class WeightServer:
    """A bounded HTTP server on 127.0.0.1 that serves named bodies and counts the requests."""

    def __init__(self):
        self.bodies = {}       # path -> bytes
        self.misbehaviour = {}  # path -> "short" (EOF before Content-Length) or "reset" (RST)
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10  # no test can hang on a stuck socket

            def do_GET(self):
                server.requests.append(self.path)
                body = server.bodies.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                how = server.misbehaviour.get(self.path)
                if how is None:
                    self.wfile.write(body)
                    return
                self.wfile.write(body[: len(body) // 3])
                self.wfile.flush()
                if how == "reset":  # linger 0: close() sends RST instead of FIN
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    """A synthetic Keras h5 (full VGG-19 shapes): (bytes, the params it must convert to, md5, sha256)."""
    path = tmp_path_factory.mktemp("weights") / KERAS_NAME
    params = write_synthetic("keras-h5", path)
    body = path.read_bytes()
    # hashlib (Python standard library) is the reference for the checksums.
    return path, body, params, hashlib.md5(body).hexdigest(), hashlib.sha256(body).hexdigest()


@pytest.fixture
def server(keras_file):
    web = WeightServer()
    _, body, _, _, _ = keras_file
    web.bodies["/v0.1/" + KERAS_NAME] = body
    web.bodies["/short/" + KERAS_NAME] = body
    web.misbehaviour["/short/" + KERAS_NAME] = "short"
    web.bodies["/reset/" + KERAS_NAME] = body
    web.misbehaviour["/reset/" + KERAS_NAME] = "reset"
    web.bodies["/small.bin"] = bytes(range(256)) * 400
    yield web
    web.close()


def cached_files(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def assert_params_equal(path, expected):
    params, metadata = load_params(path)
    assert metadata.preprocessing == "caffe"
    assert sorted(params) == sorted(expected)
    for layer, arrays in expected.items():
        np.testing.assert_array_equal(params[layer]["kernel"], arrays["kernel"])
        np.testing.assert_array_equal(params[layer]["bias"], arrays["bias"])


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NST_JAX_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch_module.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("NST_JAX_CACHE")
    assert fetch_module.cache_dir() == tmp_path / "xdg" / "nst-jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fetch_module.cache_dir() == tmp_path / "home" / ".cache" / "nst-jax"


def test_default_download_is_verified_converted_and_cached_once(server, empty_cache, keras_file, monkeypatch):
    _, body, params, md5, _ = keras_file
    url = server.url("/v0.1/" + KERAS_NAME)
    monkeypatch.setattr(fetch_module, "DEFAULT_URL", url)
    monkeypatch.setitem(fetch_module.KNOWN_CHECKSUMS, KERAS_NAME, md5)

    path = default_params_path()

    assert path == empty_cache / fetch_module.DEFAULT_PARAMS_NAME
    assert_params_equal(path, params)
    assert hashlib.md5((empty_cache / KERAS_NAME).read_bytes()).hexdigest() == md5
    assert cached_files(empty_cache) == sorted([KERAS_NAME, fetch_module.DEFAULT_PARAMS_NAME])  # no temp left
    assert len(server.requests) == 1
    assert default_params_path() == path
    assert len(server.requests) == 1  # the second call only looked at the cache


def test_cli_prints_path_and_force_downloads_again(server, empty_cache, keras_file, capsys):
    _, _, params, md5, _ = keras_file
    url = server.url("/v0.1/" + KERAS_NAME)

    assert main(["--url", url, "--md5", md5]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(empty_cache / fetch_module.DEFAULT_PARAMS_NAME)  # a mirror fills the default entry
    assert_params_equal(printed, params)
    assert main(["--url", url, "--md5", md5.upper()]) == 0
    assert capsys.readouterr().out.strip() == printed
    assert len(server.requests) == 1
    assert main(["--url", url, "--md5", md5, "--force"]) == 0
    assert len(server.requests) == 2
    assert_params_equal(printed, params)


@pytest.mark.parametrize("wrong, algorithm", [("0" * 32, "md5"), ("f" * 64, "sha256")])
def test_wrong_checksum_is_refused_and_nothing_cached(server, empty_cache, wrong, algorithm):
    url = server.url("/v0.1/" + KERAS_NAME)
    with pytest.raises(WeightsFileError, match=algorithm) as caught:
        fetch(url, wrong)
    assert url in str(caught.value) and wrong in str(caught.value)
    assert cached_files(empty_cache) == []


def test_sha256_checksum_is_accepted(server, tmp_path):
    body = server.bodies["/small.bin"]
    destination = download(server.url("/small.bin"), tmp_path / "small.bin",
                           hashlib.sha256(body).hexdigest())
    assert destination.read_bytes() == body
    assert cached_files(tmp_path) == ["small.bin"]


@pytest.mark.parametrize("how, complaint", [("short", r"cut short: \d+ of \d+ bytes"),
                                             ("reset", r"failed.* \(Connection reset by peer\)")])
def test_transfer_cut_short_leaves_nothing_cached(server, empty_cache, keras_file, how, complaint):
    _, _, _, md5, _ = keras_file
    url = server.url(f"/{how}/{KERAS_NAME}")
    with pytest.raises(WeightsFileError, match=complaint + ".*nothing cached") as caught:
        fetch(url, md5)
    assert url in str(caught.value) and "\n" not in str(caught.value)
    assert cached_files(empty_cache) == []


def test_connection_refused_is_one_line_naming_the_url(empty_cache, tmp_path, capsys):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        url = f"http://127.0.0.1:{unused.getsockname()[1]}/{KERAS_NAME}"
        with pytest.raises(WeightsFileError) as caught:
            fetch(url, "0" * 32)
        message = str(caught.value)
        assert "\n" not in message
        assert f"download of {url} failed" in message
        for hint in ("--weights FILE", "NST_JAX_WEIGHTS", "python -m weights_tools.convert"):
            assert hint in message
        assert cached_files(empty_cache) == []
        with pytest.raises(WeightsFileError):
            download(url, tmp_path / "bar.h5", progress=True)
        assert capsys.readouterr().err == ""  # no progress bar for a transfer that never began

        assert main(["--url", url, "--md5", "0" * 32]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == f"error: {message}\n"


def test_http_error_and_bad_flags(server, empty_cache, capsys):
    with pytest.raises(WeightsFileError, match="HTTP 404"):
        fetch(server.url("/missing.h5"), "0" * 32)
    with pytest.raises(UserInputError, match="--md5"):
        fetch(server.url("/v0.1/" + KERAS_NAME), "not-a-hash")
    assert main(["--url", "http://127.0.0.1:1/", "--md5", "0" * 32]) == 2
    assert capsys.readouterr().err.startswith("error: --url")
    assert cached_files(empty_cache) == []


def test_environment_override_params_file_is_used_as_is(server, empty_cache, synthetic_params_path,
                                                        monkeypatch):
    monkeypatch.setattr(fetch_module, "DEFAULT_URL", server.url("/v0.1/" + KERAS_NAME))
    monkeypatch.setenv("NST_JAX_WEIGHTS", str(synthetic_params_path))
    assert default_params_path() == synthetic_params_path
    assert server.requests == []


def test_environment_override_public_file_is_converted_once(server, empty_cache, keras_file, monkeypatch):
    path, _, params, _, _ = keras_file
    monkeypatch.setattr(fetch_module, "DEFAULT_URL", server.url("/v0.1/" + KERAS_NAME))
    monkeypatch.setenv("NST_JAX_WEIGHTS", str(path))

    converted = default_params_path()
    assert converted.parent == empty_cache
    assert_params_equal(converted, params)
    written = os.stat(converted).st_mtime_ns
    assert default_params_path() == converted
    assert os.stat(converted).st_mtime_ns == written  # not converted a second time
    assert server.requests == []


def test_environment_override_missing_file(empty_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("NST_JAX_WEIGHTS", str(tmp_path / "nope.h5"))
    with pytest.raises(WeightsFileError, match="NST_JAX_WEIGHTS=.*nope.h5: no such file"):
        default_params_path()


def test_progress_bar_when_stderr_is_not_a_terminal(server, tmp_path, capsys):
    url = server.url("/small.bin")
    download(url, tmp_path / "quiet.bin", progress=None)  # auto: captured stderr is no terminal
    assert capsys.readouterr().err == ""
    download(url, tmp_path / "loud.bin", progress=True)
    shown = capsys.readouterr().err
    size_mb = f"{len(server.bodies['/small.bin']) / 1e6:.1f}"
    assert shown.startswith("\r") and shown.endswith("\n") and "100.0%" in shown and size_mb in shown


def test_format_progress():
    assert format_progress(40_000_000, 80_000_000, 2.0) == "    40.0 / 80.0 MB  50.0%    20.0 MB/s"
    assert format_progress(5_000_000, None, 0.5) == "     5.0 MB    10.0 MB/s"


@pytest.mark.parametrize("name", ["params.bin", "params", "params.h5", "params.pth"])
def test_renamed_params_file_is_used_as_is(empty_cache, tmp_path, synthetic_params_path, name):
    renamed = tmp_path / name
    os.link(synthetic_params_path, renamed)
    assert fetch_module.params_for_file(renamed, origin="--weights") == renamed
    assert cached_files(empty_cache) == []  # nothing converted


def test_public_file_named_npz_is_converted(empty_cache, tmp_path, keras_file):
    path, _, params, _, _ = keras_file
    renamed = tmp_path / "vgg19.npz"  # a Keras h5 that only looks like a params file
    os.link(path, renamed)
    converted = fetch_module.params_for_file(renamed, origin="--weights")
    assert converted.parent == empty_cache
    assert_params_equal(converted, params)


def test_unknown_pth_advice_can_be_followed_from_fetch(server, empty_cache, tmp_path, capsys):
    # The converter asks for --preprocessing; nst_jax.weights.fetch must accept what it is told.
    public = tmp_path / "my_vgg19.pth"
    truth = write_synthetic("torchvision-pth", public)
    server.bodies["/my_vgg19.pth"] = public.read_bytes()
    url = server.url("/my_vgg19.pth")
    assert main(["--url", url]) == 2
    note, advice = capsys.readouterr().err.splitlines()  # the note: no checksum known for the URL
    assert note.startswith("note: ") and advice.startswith("error: ") and "--preprocessing caffe" in advice
    assert main(["--url", url, "--preprocessing", "caffe"]) == 0
    printed = capsys.readouterr().out.strip()
    assert_params_equal(printed, truth)  # preprocessing "caffe", as asked
