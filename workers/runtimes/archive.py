"""Model directories as one tar file, so a multi-file model is one content-addressed, sha256-checked artifact.

``pack`` is deterministic (sorted names, zero mtimes and owners): the same directory always gives the same bytes and
so the same sha256, and registering it twice stores it once. ``check`` refuses what a safe directory must not hold
before anything is extracted or parsed: links, devices, absolute or ``..`` paths, pickle-format weights and Python
files (safetensors and JSON only, so loading never unpickles and never imports code from the artifact).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from app.errors import CorruptArtifact

#: Suffixes that would make loading unpickle or import code from the artifact.
REFUSED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".py", ".pyc")
#: Most members an archive may hold; a model directory has tens of files, not thousands.
MAX_MEMBERS = 1000


def pack(model_dir: Path, out: Path) -> Path:
    """Write ``model_dir``'s regular files (recursively) to the tar ``out``, reproducibly."""
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and not p.is_symlink())
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            info = tarfile.TarInfo(path.relative_to(model_dir).as_posix())
            info.size, info.mode = path.stat().st_size, 0o644
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return out


def check(tar: tarfile.TarFile) -> list[str]:
    """Names of the archive's files; raise CorruptArtifact for anything a model directory must not hold."""
    members = tar.getmembers()
    if len(members) > MAX_MEMBERS:
        raise CorruptArtifact(f"archive holds {len(members)} members, over the limit of {MAX_MEMBERS}")
    names = []
    for member in members:
        path = PurePosixPath(member.name)
        if member.isdir():
            continue
        if not member.isfile():
            raise CorruptArtifact(f"archive member {member.name!r} is not a regular file (links are refused)")
        if path.is_absolute() or ".." in path.parts:
            raise CorruptArtifact(f"archive member {member.name!r} points outside the model directory")
        if path.suffix.lower() in REFUSED_SUFFIXES:
            raise CorruptArtifact(
                f"archive member {member.name!r} is refused: weights must be safetensors, and no code may ship"
            )
        names.append(path.as_posix().removeprefix("./"))
    return names


@contextmanager
def opened(artifact: Path) -> Iterator[tuple[tarfile.TarFile, list[str]]]:
    """The open, checked archive and its file names; CorruptArtifact when it is not a tar or fails ``check``."""
    try:
        # Not a with-block: its except clause would also catch, and misname, errors raised in the caller's body.
        tar = tarfile.open(artifact, "r:*")  # noqa: SIM115 - closed by the with-block below
    except (tarfile.TarError, OSError) as exc:
        raise CorruptArtifact(f"{artifact.name} is not a tar archive of a model directory: {exc}") from exc
    with tar:
        yield tar, check(tar)


def read_json(tar: tarfile.TarFile, name: str) -> Any:
    """A JSON member's content, or None when the archive has no such member."""
    try:
        fh = tar.extractfile(name)
    except KeyError:
        return None
    if fh is None:
        return None
    try:
        return json.load(io.TextIOWrapper(fh, encoding="utf-8"))
    except ValueError as exc:
        raise CorruptArtifact(f"archive member {name} is not JSON: {exc}") from exc


def extract(artifact: Path, dest: Path) -> list[str]:
    """Check, then extract into ``dest``; returns the file names."""
    with opened(artifact) as (tar, names):
        try:
            # The "data" filter re-checks paths, links and modes on extraction (PEP 706), beside check() above.
            tar.extractall(dest, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise CorruptArtifact(f"{artifact.name} cannot be extracted: {exc}") from exc
    return names
