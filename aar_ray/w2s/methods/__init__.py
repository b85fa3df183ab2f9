"""Built-in methods, one file each, written exactly as a researcher agent would write one.

Read any of them as an example of the method interface (`aar_ray.w2s.api`). `resolve(name)`
returns the source path of a built-in by name, or of a method file by path.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from aar_ray.config import ConfigError

METHODS_DIR = Path(__file__).resolve().parent
# The registry is the folder: every file here is a built-in, naive (the reference) first.
BUILTINS = ("naive",) + tuple(sorted(p.stem for p in METHODS_DIR.glob("*.py") if p.stem not in ("__init__", "naive")))


def resolve(name_or_path: str) -> Path:
    """Path of the method file for a built-in name or a path to a .py file."""
    if name_or_path in BUILTINS:
        return METHODS_DIR / f"{name_or_path}.py"
    p = Path(name_or_path)
    if p.suffix == ".py" and p.is_file():
        return p.resolve()
    raise ConfigError(f"methods: {name_or_path!r} is neither a built-in ({', '.join(BUILTINS)}) nor an existing .py file")


def method_name(name_or_path: str) -> str:
    return name_or_path if name_or_path in BUILTINS else Path(name_or_path).stem


def summary(source: str, fallback: str = "", limit: int = 60) -> str:
    """A method's one-line summary: its docstring's first line (composed methods: their blocks),
    shortened; else `fallback`."""
    import ast

    try:
        doc = ast.get_docstring(ast.parse(source)) or ""
    except SyntaxError:
        doc = ""
    line = doc.strip().splitlines()[0].strip() if doc.strip() else fallback
    line = line.removeprefix("Composed method: ")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def load_module(path: Path) -> ModuleType:
    """Import a method file as a fresh module. Trusted code only: agent code goes through the sandbox."""
    spec = importlib.util.spec_from_file_location(f"aar_method_{source_hash(path.read_text())}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: a method's dataclasses look themselves up there
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise ConfigError(f"method {path}: defines no run(ctx) function")
    return module
