"""Content-addressed disk cache for pretrained bases and baselines.

Keys come only from what changes results (style rule 4). Writes are atomic: a partial build in a
temporary directory is never mistaken for a finished one, and a crashed build leaves nothing that a
later run would read.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from aar_ray.home import cache_dir  # noqa: F401 - where the cache lives is the results home's business


def content_key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def path_for(kind: str, key: str) -> Path:
    return cache_dir() / kind / key


@contextlib.contextmanager
def building(path: Path) -> Iterator[Path]:
    """Yield a temp dir to build into; on success it atomically becomes `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished the same build first; its result is equivalent
            if not path.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def private_once(name: str, make: Callable[[], str]) -> str:
    """The text of `<cache>/private/<name>` (0600 in a 0700 directory, never mounted in a sandbox),
    written from `make()` by the first process that asks: atomic, and the first writer wins, so every
    process reads the same text."""
    d = cache_dir() / "private"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    path = d / name
    if not path.exists():
        tmp = d / f".{name}.{os.getpid()}.{os.urandom(4).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(make())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return path.read_text()


def load(kind: str, key: str) -> Any | None:
    import torch

    f = path_for(kind, key).with_suffix(".pt")
    if not f.is_file():
        return None
    return torch.load(f, weights_only=True)


def save(kind: str, key: str, obj: Any) -> None:
    import torch

    f = path_for(kind, key).with_suffix(".pt")
    f.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{f.name}.", dir=f.parent)
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, f)
