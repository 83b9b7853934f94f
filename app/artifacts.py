"""The artifact store: content-addressed files, verified by sha256 before every load.

``LocalArtifactStore`` keeps artifacts under one directory (shared storage when workers run on several hosts).
Another store (S3, HTTP) implements the same three methods.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from app.errors import ArtifactError, ArtifactMissing, ChecksumMismatch

_CHUNK_BYTES = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def path_of(uri: str) -> Path:
    """``file:///x/y`` or a plain path -> Path."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme else uri)
    raise ArtifactError(f"artifact URI {uri!r}: scheme {parsed.scheme!r} is not supported by the local store")


class ArtifactStore(Protocol):
    def put(self, source: Path) -> tuple[str, str, int]:
        """Store a file; return (uri, sha256, size_bytes)."""

    def fetch(self, uri: str, sha256: str) -> Path:
        """Return a local path to the artifact after checking its sha256; raise ArtifactError otherwise."""


class LocalArtifactStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def put(self, source: Path) -> tuple[str, str, int]:
        source = Path(source)
        if not source.is_file():
            raise ArtifactMissing(f"artifact file {source} does not exist")
        size = source.stat().st_size
        self._check_size(source, size)
        digest = sha256_of(source)
        target = self.root / digest / source.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(target.suffix + ".part")
            shutil.copyfile(source, tmp)
            tmp.replace(target)  # atomic: a reader never sees half a file
        return target.resolve().as_uri(), digest, size

    def fetch(self, uri: str, sha256: str) -> Path:
        path = path_of(uri)
        if not path.is_file():
            raise ArtifactMissing(f"artifact {uri} is missing")
        self._check_size(path, path.stat().st_size)
        actual = sha256_of(path)
        if actual != sha256:
            raise ChecksumMismatch(f"artifact {uri} has sha256 {actual[:16]}..., registered {sha256[:16]}...")
        return path

    def _check_size(self, path: Path, size: int) -> None:
        if size > self.max_bytes:
            raise ArtifactError(f"artifact {path} is {size} bytes, over the {self.max_bytes}-byte limit")
