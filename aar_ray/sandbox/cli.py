"""`aar trial METHOD.py [preset] [key=value ...] [--json] [--timeout-s N]`: one method, sandboxed.

`sandbox.require=[...]` and `sandbox.allow_degraded=true` among the overrides set the layers it
requires, as a campaign's `sandbox` section does (default: this installation's, see requirement.py).

Runs a method file exactly as a campaign trial does: the scorer builds the `TrialRequest` (the
harness's seeds, the preset's student device and dtype, the limits), the pool's job function
(`run_trial`) runs every seed in one sandboxed child, and the scorer turns the predictions into
validation numbers. Test numbers are never printed. Whatever the method does, the command ends
with one line (a JSON object with --json: status, reason, val_pgr, val_pgr_seeds, sandbox, device,
dtype, seconds) and exits: 0 when the trial is ok, 1 when the method failed, 2 when the harness
could not run it (bad arguments, sandbox unavailable).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from aar_ray.config import ConfigError, SandboxConfig, ScoringConfig, TrialSettings, W2SConfig, load_config
from aar_ray.sandbox import precheck
from aar_ray.sandbox.contract import TrialOutcome, TrialStatus
from aar_ray.sandbox.runner import SandboxError, SandboxLimits


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aar trial", description=__doc__.splitlines()[0])
    p.add_argument("method", help="path to the method .py file (or a built-in name)")
    p.add_argument("rest", nargs="*", help="optional preset YAML, then key=value config overrides")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--timeout-s", type=float, default=600.0, help="wall-clock limit per seed (default 600)")
    p.add_argument("--memory-mb", type=int, default=TrialSettings.memory_mb, help="memory cap per trial")
    p.add_argument("--no-precheck", action="store_true", help="skip the static pre-check (the layers still apply)")
    return p


def trial_limits(sandbox_overrides: list[str] = ()) -> SandboxLimits:
    """The sandbox policy of a trial outside a campaign: the layers its `sandbox` section requires
    (`sandbox.`-less dotlist; none: this installation's). Raises SandboxError when this host lacks one."""
    from aar_ray.sandbox.requirement import resolve

    return SandboxLimits(require=resolve(load_config(SandboxConfig, None, list(sandbox_overrides))).required)


def val_trial(method: Path, cfg: W2SConfig, settings: TrialSettings, check_source: bool,
              limits: SandboxLimits | None = None) -> tuple[TrialOutcome, list]:
    """`aar trial`'s trial: a W2S preset's seeds and fidelity, through `scored_trial`, under `limits`
    (None: requiring this installation's layers, `trial_limits()`)."""
    scoring = ScoringConfig(seeds=list(cfg.seeds), query_budget=1)
    return scored_trial(method, cfg, scoring, settings, limits or trial_limits(), check_source, cfg.fidelity)


def scored_trial(method: Path, w2s: W2SConfig, scoring: ScoringConfig, settings: TrialSettings, limits: SandboxLimits,
                 check_source: bool, fidelity: str) -> tuple[TrialOutcome, list]:
    """The campaign's path for one trial: scorer request -> run_trial -> validation PGR per seed."""
    from aar_ray.sandbox.trial import run_trial
    from aar_ray.scoring import Scorer

    scorer = Scorer(w2s, scoring, trial=settings)
    request = scorer.request(fidelity)
    source = method.read_text()
    outcome = run_trial(source, request, limits, check_source=check_source)
    if not outcome.ok:
        return outcome, []
    val = scorer.score("cli", "trial", method.stem, source, fidelity, outcome.preds, outcome.losses, outcome.sandbox)
    return outcome, [float(v) for v in val["val_pgr"]["per_seed"]]  # the test numbers stay in the scorer


def _emit(out: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(out), flush=True)
        return
    rows = [("status", out["status"]), ("reason", out["reason"]),
            ("val_pgr", "-" if out["val_pgr"] is None else f"{out['val_pgr']:.3f}"),
            ("val_pgr per seed", ", ".join(f"{v:.3f}" for v in out.get("val_pgr_seeds", [])) or "-"),
            ("device", f"{out['device'] or '-'} {out['dtype']}".strip()),
            ("seconds", f"{out.get('seconds', 0):.1f}"), ("sandbox", ", ".join(out["sandbox"]) or "-")]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}", flush=True)


def _run(args: argparse.Namespace, out: dict) -> int:
    from aar_ray.w2s.methods import resolve

    method = resolve(args.method)
    preset = args.rest[0] if args.rest and "=" not in args.rest[0] else None
    overrides = args.rest[1:] if preset else args.rest
    sandbox = [o.removeprefix("sandbox.") for o in overrides if o.startswith("sandbox.")]  # as a campaign's section
    cfg = load_config(W2SConfig, preset, [o for o in overrides if not o.startswith("sandbox.")])
    limits = trial_limits(sandbox)
    findings = [] if args.no_precheck else precheck.check(method.read_text(), method.name)
    if findings:  # before building the experiment: a refusal costs milliseconds
        res, pgrs = TrialOutcome.failure(TrialStatus.REJECTED, "static pre-check: " + "; ".join(findings[:5]),
                                         ("precheck",)), []
    else:
        settings = TrialSettings(timeout_s=args.timeout_s * len(cfg.seeds), seed_timeout_s=args.timeout_s,
                                 memory_mb=args.memory_mb, threads=max(1, cfg.torch_threads),
                                 num_gpus=1 if cfg.device == "cuda" else 0)
        res, pgrs = val_trial(method, cfg, settings, not args.no_precheck, limits)
    out.update(status=res.status.value, reason=res.reason, sandbox=list(res.layers), val_pgr_seeds=pgrs,
               val_pgr=sum(pgrs) / len(pgrs) if res.ok and pgrs else None, device=res.device, dtype=res.dtype)
    return 0 if res.ok else 2 if res.status is TrialStatus.SANDBOX_ERROR else 1


def trial_main(argv: list[str]) -> int:
    t0 = time.monotonic()
    out = {"status": TrialStatus.SANDBOX_ERROR.value, "reason": "", "val_pgr": None, "sandbox": [], "device": "",
           "dtype": ""}
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
        code = _run(args, out)
    except ConfigError as e:
        out["reason"] = f"config: {e}"
    except SandboxError as e:  # a required layer is missing here: the message says how to accept less
        out["reason"] = str(e)
    except Exception as e:  # noqa: BLE001 - the last line must come whatever happened
        out["reason"] = f"harness error: {type(e).__name__}: {e}"
    out["seconds"] = round(time.monotonic() - t0, 1)
    _emit(out, as_json)
    return code


def main() -> None:
    sys.exit(trial_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
