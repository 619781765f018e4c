"""The default VGG-19 weights: download once, verify, convert, and cache the params file.

`python -m weights_tools.fetch` is its command line. `default_params_path()` is what the run command
calls when no --weights is given. Cache: $NST_JAX_CACHE, else $XDG_CACHE_HOME/nst-jax, else
~/.cache/nst-jax. $NST_JAX_WEIGHTS (a params .npz or a public weight file) overrides everything.
"""

import dataclasses
import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional, Tuple

from nst_jax.cache import cache_dir
from nst_jax.atomic import PathLike, atomic_write
from nst_jax.errors import UserInputError, WeightsFileError, reason
from nst_jax.weights.hashing import file_digest
from nst_jax.weights.layouts import KNOWN_FILES
from nst_jax.weights.params_file import Params, ParamsMetadata, load_params

# Keras Applications' no-top VGG-19 (Caffe-derived Oxford weights): the first known file.
_DEFAULT = KNOWN_FILES[0]
DEFAULT_URL = _DEFAULT.url
DEFAULT_FILE_NAME = _DEFAULT.name
# The converted default weights, named for their preprocessing convention. Keyed on the file
# name, not the URL, so a download from a mirror fills the same cache entry.
DEFAULT_PARAMS_NAME = "vgg19_caffe.npz"

# Full checksums of public files known by name, so a mirror (--url) is verified without --md5
# (torch hub's 8-digit prefixes cannot verify a download, so they are left out).
KNOWN_CHECKSUMS = {known.name: known.digest for known in KNOWN_FILES if len(known.digest) in (32, 64)}

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60
_PROGRESS_INTERVAL_S = 0.2


def default_params_path(preprocessing: Optional[str] = None) -> Path:
    """The params file to use when the user names none: $NST_JAX_WEIGHTS, else the default download.

    Downloads and converts on first use; later calls only look at the cache. `preprocessing`
    ("caffe" or "torch") is passed to the conversion of a public $NST_JAX_WEIGHTS file.
    """
    override = os.environ.get("NST_JAX_WEIGHTS")
    if override:
        return params_for_file(Path(override).expanduser(), origin="NST_JAX_WEIGHTS",
                               preprocessing=preprocessing)
    return fetch()


def params_for_file(path: Path, origin: str = "NST_JAX_WEIGHTS", preprocessing: Optional[str] = None) -> Path:
    """A params file as is; a public weight file converted into the cache once.

    Which is which is told by the file's content (`readers.sniff_format`), not its name, so a
    params file called params.bin or a Keras file called weights.pth work too.
    """
    from nst_jax.weights.readers import sniff_format

    if path.is_dir():
        raise WeightsFileError(f"{origin}={path}: is a directory, not a weights file")
    if not path.is_file():
        raise WeightsFileError(f"{origin}={path}: no such file")
    if sniff_format(path) == "params":
        return path
    stat = path.stat()
    # Keyed on where the file is and its size and time, so an edited file is converted again
    # without hashing hundreds of megabytes on every run; and on the convention asked for.
    identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if preprocessing:
        identity += f"|{preprocessing}"
    key = hashlib.sha256(identity.encode()).hexdigest()
    params_path = cache_dir() / f"{path.stem}-{key[:12]}.npz"
    if not params_path.is_file():
        _convert_atomically(path, params_path, preprocessing)
    return params_path


def load_weights(path: Optional[PathLike] = None, preprocessing: Optional[str] = None,
                 origin: str = "--weights") -> Tuple[Params, ParamsMetadata]:
    """(params, metadata) from `path` (a params file or a public VGG-19 file, converted once), else
    $NST_JAX_WEIGHTS or the default download. `preprocessing` goes to the conversion of a public
    file and overrides what the params file says; `origin` names where `path` came from in errors."""
    if path:
        found = params_for_file(Path(path).expanduser(), origin=origin, preprocessing=preprocessing)
    else:
        found = default_params_path(preprocessing)
    params, metadata = load_params(found)
    if preprocessing is not None and preprocessing != metadata.preprocessing:
        metadata = dataclasses.replace(metadata, preprocessing=preprocessing)
    return params, metadata


def fetch(url: Optional[str] = None, checksum: Optional[str] = None, *, force: bool = False,
          progress: Optional[bool] = None, timeout: float = TIMEOUT_S,
          preprocessing: Optional[str] = None) -> Path:
    """Download `url` into the cache (if not there), verify it, convert it; return the params path.

    Args:
      url: a public VGG-19 weight file; None: DEFAULT_URL (Keras' no-top h5).
      checksum: 32 hex digits (MD5) or 64 (SHA-256), the Keras convention. None: the known
        checksum for the file's name, or no verification for an unknown file.
      force: download and convert again even when cached.
      progress: progress bar on stderr; None shows it only when stderr is a terminal.
      timeout: seconds to wait for the server before giving up.
      preprocessing: "caffe" or "torch" for the conversion (needed for a .pth of unknown origin).
    """
    url = url or DEFAULT_URL
    file_name = _file_name(url)
    checksum = _checksum_for(file_name, checksum)
    cache = cache_dir()
    download_path = cache / file_name
    if file_name == DEFAULT_FILE_NAME and preprocessing in (None, "caffe"):
        params_path = cache / DEFAULT_PARAMS_NAME
    else:
        params_path = cache / f"{Path(file_name).stem}{'_' + preprocessing if preprocessing else ''}.npz"
    if params_path.is_file() and not force:
        return params_path
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WeightsFileError(f"cannot create the weights cache {cache}: {error.strerror}; "
                               f"set NST_JAX_CACHE to a writable folder") from None
    if force or not (download_path.is_file() and _matches(download_path, checksum)):
        if progress is None:
            progress = getattr(sys.stderr, "isatty", lambda: False)()
        download(url, download_path, checksum, progress=progress, timeout=timeout)
    _convert_atomically(download_path, params_path, preprocessing)
    return params_path


def download(url: str, destination: PathLike, checksum: Optional[str] = None, *, progress: bool = False,
             timeout: float = TIMEOUT_S) -> Path:
    """Stream `url` to `destination`; it appears there only complete and with the right checksum.

    Raises WeightsFileError on any network failure, short transfer or wrong checksum.
    """
    destination = Path(destination)
    hasher = hashlib.new(_algorithm(checksum))
    # Only a complete, verified file gets the final name: a refusal below discards the temporary.
    with atomic_write(destination) as stream:
        received, expected = _stream(url, stream, hasher, progress, timeout)
        if expected is not None and received < expected:
            raise WeightsFileError(f"download of {url} cut short: {received} of {expected} bytes; "
                                   f"nothing cached. {_by_hand()}")
        if checksum is not None and hasher.hexdigest() != checksum.lower():
            raise WeightsFileError(
                f"download of {url} refused: {hasher.name} {hasher.hexdigest()}, expected "
                f"{checksum.lower()}; nothing cached")
    return destination


def format_progress(received: int, expected: Optional[int], seconds: float) -> str:
    """One progress line: bytes so far (of the total), percent and speed."""
    speed = received / 1e6 / max(seconds, 1e-9)
    if expected:
        return (f"{received / 1e6:8.1f} / {expected / 1e6:.1f} MB "
                f"{100 * received / expected:5.1f}% {speed:7.1f} MB/s")
    return f"{received / 1e6:8.1f} MB {speed:7.1f} MB/s"


def _stream(url, stream, hasher, progress, timeout):
    """Copy the response body to `stream` in chunks. Returns (bytes received, Content-Length)."""
    received, expected, finished = 0, None, False
    started = last_shown = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            while chunk := response.read(CHUNK_BYTES):
                stream.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                now = time.monotonic()
                if progress and now - last_shown >= _PROGRESS_INTERVAL_S:
                    _show(format_progress(received, expected, now - started))
                    last_shown = now
        finished = True
    except urllib.error.HTTPError as error:
        raise WeightsFileError(f"download of {url} failed: HTTP {error.code} {error.reason}; "
                               f"nothing cached. {_by_hand()}") from None
    except urllib.error.URLError as error:
        raise WeightsFileError(f"download of {url} failed ({reason(error.reason)}); nothing cached. "
                               f"{_by_hand()}") from None
    except (OSError, http.client.HTTPException) as error:
        # Reset or timed out mid-transfer: whatever arrived is discarded by the caller.
        raise WeightsFileError(f"download of {url} failed after {received} bytes "
                               f"({reason(error)}); nothing cached. {_by_hand()}") from None
    except ValueError as error:  # urllib's word for a malformed or unsupported URL
        raise UserInputError(f"--url {url}: {error}") from None
    finally:
        # The final count; after a failure it also ends the bar's line, so the error starts afresh.
        if progress and (finished or last_shown > started):
            _show(format_progress(received, expected, time.monotonic() - started), end="\n")
    return received, expected


def _show(line, end=""):
    print(f"\r{line}", end=end, file=sys.stderr, flush=True)


def _by_hand():
    return ("Get that file by hand and give it to 'python -m nst_jax.run' with --weights FILE, or set "
            "NST_JAX_WEIGHTS=FILE, or convert it with 'python -m weights_tools.convert FILE -o params.npz'")


def _file_name(url):
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name.startswith("."):
        raise UserInputError(f"--url {url}: does not end in a file name such as vgg19.h5")
    return name


def _checksum_for(file_name, checksum):
    if checksum is None:
        return KNOWN_CHECKSUMS.get(file_name)
    checksum = checksum.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{32}|[0-9a-f]{64}", checksum):
        raise UserInputError(f"--md5 {checksum}: expected 32 hex digits (MD5) or 64 (SHA-256)")
    return checksum


def _algorithm(checksum):
    # Keras' convention: a 64-digit hash is SHA-256, anything else MD5.
    return "sha256" if checksum is not None and len(checksum) == 64 else "md5"


def _matches(path, checksum):
    if checksum is None:
        return True  # nothing to verify against: the cached copy is as good as a new one
    return file_digest(path, _algorithm(checksum)) == checksum


def _convert_atomically(source, params_path, preprocessing=None):
    """Convert into the cache; save_params writes beside the final name and renames when done."""
    from nst_jax.weights.convert import convert  # the converter is only needed on a cache miss

    params_path.parent.mkdir(parents=True, exist_ok=True)
    convert(source, params_path, preprocessing)
