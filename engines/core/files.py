"""Small file and package helpers that the build and the runtime share."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """'sha256:<hex>' of a file, read in chunks (plans and weights are gigabytes)."""
    digest = hashlib.sha256()
    update_with_file(digest, path)
    return "sha256:" + digest.hexdigest()


def remembered_sha256(path: Path, record: Path) -> str:
    """`file_sha256(path)`, remembered in the JSON file `record` against the file's identity (inode,
    size, modification and change times: any write changes the last): a start that finds the same
    file skips hashing it again (the SDXL UNet's weights take 10 s or more). Hashes every time
    where `record` cannot be written."""
    stat = path.stat()
    identity = [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        known = {}
    entry = known.get(str(path.resolve()))
    if isinstance(entry, list) and entry[:-1] == identity:
        return str(entry[-1])
    digest = file_sha256(path)
    known[str(path.resolve())] = [*identity, digest]
    with contextlib.suppress(OSError):
        write_atomically(record, json.dumps(known))
    return digest


def bytes_sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def update_with_file(digest: Any, path: Path) -> None:
    """Feed a file into a running digest, in chunks."""
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)


def write_atomically(path: Path, data: bytes | memoryview | str) -> None:
    """Write to a temporary file beside `path`, then rename: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w" if isinstance(data, str) else "wb") as handle:
            handle.write(data)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the service may run as another user
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def replaced_directory(directory: Path) -> Iterator[Path]:
    """A staging directory beside `directory` that replaces it whole once the block succeeds: an
    interrupted write leaves the old directory or none, never half of one."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private; the service may run as another user
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def package_version(*names: str) -> str | None:
    """The installed version of the first of `names` found (a module can ship under several names)."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None
