"""Method families: each one a *writer* of readable method files, and the offline researcher's space.

A family is a module here defining
    NAME     its name, the prefix of every method it writes (`cluster_3`);
    SPACE    its parameters, each with the choices a researcher would try;
    OPENER   its first idea: what a researcher new to the family tries first;
    RECIPES  the recipes (`ctx.recipe`) it is written for;
    trains(params) -> bool        (optional, default True) whether the method trains a student: only
                                  then does fidelity "quick" change its result;
    canonical(params) -> params   the parameters that matter for those choices (the rest dropped, so
                                  two equal methods are one file);
    write(params) -> source       a method file: a docstring saying what it does and why, the
                                  parameters as module constants, then the code.
A written file names its family (`FAMILY = "select"`) and holds its parameters as upper-case
constants, so `parse(source)` reads any family method back, e.g. one another researcher wrote.
"""
from __future__ import annotations

import ast
from types import ModuleType

from aar_ray.agents.families import cluster, denoise, ensemble, finetune, loss, select

FAMILIES: dict[str, ModuleType] = {m.NAME: m for m in (loss, select, ensemble, denoise, cluster, finetune)}


def names(recipe: str = "probe") -> list[str]:
    """The families written for `recipe`, in registry order."""
    return [n for n, m in FAMILIES.items() if recipe in m.RECIPES]


def space(recipe: str = "probe") -> dict[str, dict[str, list]]:
    """The whole search space: family -> parameter -> choices (what Ray Tune searches too)."""
    return {n: dict(FAMILIES[n].SPACE) for n in names(recipe)}


def canonical(family: str, params: dict) -> dict:
    """Defaults (the opener) filled in, unknown keys rejected, irrelevant ones dropped."""
    fam = FAMILIES[family]
    unknown = set(params) - set(fam.SPACE)
    if unknown:
        raise ValueError(f"family {family!r} has no parameters {sorted(unknown)}")
    return fam.canonical({**fam.OPENER, **params})


def trains(family: str, params: dict) -> bool:
    """Whether the method trains a student (a family without `trains` always does)."""
    fn = getattr(FAMILIES[family], "trains", None)
    return True if fn is None else bool(fn(canonical(family, params)))


def write(family: str, params: dict) -> str:
    """The method file of `family` with `params` (deterministic: equal parameters, equal file)."""
    return FAMILIES[family].write(canonical(family, params))


def parse(source: str) -> tuple[str, dict] | None:
    """(family, parameters) of a family-written method, or None for any other source."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    consts = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                consts[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    family = consts.get("FAMILY")
    if family not in FAMILIES:
        return None
    params = {k: consts[k.upper()] for k in FAMILIES[family].SPACE if k.upper() in consts}
    try:
        return family, canonical(family, params)
    except ValueError:
        return None


def family_of(name: str) -> str | None:
    """The family a method's name starts with (`cluster_3` -> 'cluster'), or None."""
    head = name.split("_")[0]
    return head if head in FAMILIES else None


def describe(family: str, params: dict) -> str:
    """A short label of a method, e.g. 'cluster(read=hidden, orient=cells)'."""
    return f"{family}(" + ", ".join(f"{k}={v}" for k, v in sorted(params.items())) + ")"
