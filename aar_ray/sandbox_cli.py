"""`aar trial METHOD.py [preset] [key=value ...] [--json] [--timeout-s N]`: one method, sandboxed.

Runs a method file as a researcher's trial would: on the quick task (or the preset given), for the
harness's seeds, each through the sandbox, scored by the engine on validation only. Test numbers
are never printed. Whatever the method does, the command ends with one line (a JSON object with
--json) and exits: 0 when the trial is ok, 1 when the method failed, 2 when the harness could not
run it (bad arguments, sandbox unavailable).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from aar_ray.config import ConfigError, W2SConfig, load_config
from aar_ray.sandbox import precheck
from aar_ray.sandbox.runner import STATUSES, SandboxLimits, SandboxResult, run_method_sandboxed, student_settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aar trial", description=__doc__.splitlines()[0])
    p.add_argument("method", help="path to the method .py file (or a built-in name)")
    p.add_argument("rest", nargs="*", help="optional preset YAML, then key=value config overrides")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--timeout-s", type=float, default=600.0, help="wall-clock limit per seed (default 600)")
    p.add_argument("--memory-mb", type=int, default=SandboxLimits.memory_mb, help="memory cap per trial")
    p.add_argument("--no-precheck", action="store_true", help="skip the static pre-check (the layers still apply)")
    return p


def val_trial(method: Path, cfg, timeout_s: float, limits: SandboxLimits, check_source: bool) -> tuple[SandboxResult, list]:
    """Engine seam: per seed, the harness's inputs through the sandbox, scored on validation only.

    Returns the last seed's SandboxResult (or the first that failed) and the per-seed val PGRs.
    """
    from aar_ray.w2s import engine

    exp = engine.prepare(cfg, progress=False)
    val_pgrs, res = [], None
    for seed in cfg.seeds:
        base = engine.baseline(exp, seed)
        inputs = engine.trial_inputs(exp, seed, base)
        ctx = inputs.ctx
        res = run_method_sandboxed(method, ctx.student.path, {k: getattr(ctx, k) for k in
                                                              ("train_ids", "train_mask", "weak_labels", "eval_ids",
                                                               "eval_mask")},
                                   probe=ctx.probe, seed=seed, fidelity=ctx.fidelity, batch_size=ctx.batch_size,
                                   timeout_s=timeout_s, limits=limits, check_source=check_source,
                                   **student_settings(ctx.student))
        if not res.ok:
            return res, val_pgrs
        _, pgr = engine.score(exp, base, inputs.eval_idx, res.preds)
        val_pgrs.append(float(pgr["val"]))  # the test entry stays here: trials never show test numbers
    return res, val_pgrs


def _emit(out: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(out), flush=True)
        return
    rows = [("status", out["status"]), ("reason", out["reason"]),
            ("val_pgr", "-" if out["val_pgr"] is None else f"{out['val_pgr']:.3f}"),
            ("val_pgr per seed", ", ".join(f"{v:.3f}" for v in out.get("val_pgr_seeds", [])) or "-"),
            ("seconds", f"{out.get('seconds', 0):.1f}"), ("sandbox", ", ".join(out["sandbox"]) or "-")]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}", flush=True)


def trial_main(argv: list[str]) -> int:
    t0 = time.monotonic()
    out = {"status": "sandbox_error", "reason": "", "val_pgr": None, "sandbox": []}
    as_json = "--json" in argv
    try:
        args = _parser().parse_intermixed_args(argv)
    except SystemExit as e:  # argparse printed its usage (or --help)
        if not e.code:
            return 0
        out["reason"] = "bad arguments (see usage above)"
        _emit(out, as_json)
        return 2
    code = 2
    try:
        from aar_ray.w2s.methods import resolve

        method = resolve(args.method)
        preset = args.rest[0] if args.rest and "=" not in args.rest[0] else None
        overrides = args.rest[1:] if preset else args.rest
        cfg = load_config(W2SConfig, preset, overrides)
        findings = [] if args.no_precheck else precheck.check(method.read_text(), method.name)
        if findings:  # before building the experiment: a refusal costs milliseconds
            res, pgrs = SandboxResult("rejected", "static pre-check: " + "; ".join(findings[:5]), layers=["precheck"]), []
        else:
            limits = SandboxLimits(memory_mb=args.memory_mb, threads=max(1, cfg.torch_threads))
            res, pgrs = val_trial(method, cfg, args.timeout_s, limits, not args.no_precheck)
        out.update(status=res.status, reason=res.reason, sandbox=res.layers, val_pgr_seeds=pgrs,
                   val_pgr=sum(pgrs) / len(pgrs) if res.ok and pgrs else None)
        code = 0 if res.ok else 2 if res.status == "sandbox_error" else 1
    except ConfigError as e:
        out["reason"] = f"config: {e}"
    except Exception as e:  # noqa: BLE001 - the last line must come whatever happened
        out["reason"] = f"harness error: {type(e).__name__}: {e}"
    out["seconds"] = round(time.monotonic() - t0, 1)
    assert out["status"] in STATUSES
    _emit(out, as_json)
    return code


def main() -> None:
    sys.exit(trial_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
