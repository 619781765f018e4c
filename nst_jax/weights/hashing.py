"""Hashes of (possibly large) files, read in chunks so a 550 MB file never sits in memory."""

import hashlib

_CHUNK_BYTES = 1 << 20


def file_digest(path, algorithm):
    """Hex digest of the file at `path` with `algorithm` ("md5" or "sha256"), streamed."""
    digest = hashlib.new(algorithm)
    buffer = bytearray(_CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb") as stream:
        while size := stream.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()
