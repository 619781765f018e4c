"""Hashes of (possibly large) files, read in chunks so a 550 MB file never sits in memory."""

import hashlib

from nst_jax.atomic import PathLike

_CHUNK_BYTES = 1 << 20


def file_digest(path: PathLike, algorithm: str) -> str:
    """Hex digest of the file at `path` with `algorithm` ("md5" or "sha256"), streamed."""
    digest = hashlib.new(algorithm)
    buffer = bytearray(_CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb") as stream:
        while size := stream.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()
