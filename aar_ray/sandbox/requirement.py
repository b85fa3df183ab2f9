"""Which sandbox layers a campaign requires, decided once, on the driver, before any trial.

    req = resolve(cfg.sandbox)        # raises SandboxUnavailable naming what is missing and how to accept less
    SandboxLimits(require=req.required)  # what every trial, on every worker, must apply

`sandbox.require: [auto]` means "this installation's layers": the first probe (`make sandbox-probe`,
or the first campaign or `aar trial`) records what `host()` offers in
`<cache>/private/sandbox_layers.json`, and later starts compare against that record. A host that
later offers less (run as another user, bubblewrap broken by an upgrade, a kernel without Landlock)
then refuses instead of quietly running with less. The driver resolves the requirement to a concrete
list and ships that list to every worker with each trial: a worker never resolves `auto` itself, so
the requirement means the same thing on every node, and a worker that cannot apply one of the layers
returns a sandbox_error (retried, never scored) instead of a result.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from aar_ray.config import SANDBOX_LAYERS, SandboxConfig
from aar_ray.sandbox.runner import Host, SandboxError, host

BASELINE_FILE = "sandbox_layers.json"  # under <cache>/private/: this installation's first probe


class SandboxUnavailable(SandboxError):
    """This host cannot apply a required layer; the message names it, why, and how to accept less."""


@dataclass(frozen=True)
class Requirement:
    """A resolved `sandbox` section."""

    required: tuple[str, ...]
    """What every trial must apply (shipped to every worker)."""
    offered: tuple[str, ...]
    """What this host offers."""
    missing: tuple[str, ...]
    """Asked for but not offered: empty unless `allow_degraded` accepted less."""
    source: str
    """Where the requirement came from: 'sandbox.require' or the installation's record."""

    def describe(self) -> str:
        text = f"sandbox layers required: {', '.join(self.required) or 'none'} (from {self.source})"
        if self.missing:
            text += f"; DEGRADED, missing here: {', '.join(self.missing)} (sandbox.allow_degraded=true)"
        return text


def offered(h: Host) -> tuple[str, ...]:
    """The SANDBOX_LAYERS this host can apply (SandboxLimits' defaults turn every available one on)."""
    have = {"uid": h.uid is not None, "rlimits": True, "cgroup": h.cgroup, "bwrap": h.bwrap is not None,
            "landlock": h.landlock_abi >= 1, "seccomp": h.seccomp, "method-runtime": True}
    return tuple(n for n in SANDBOX_LAYERS if have[n])


def why_not(h: Host, layer: str) -> str:
    """Why `layer` does not apply on this host."""
    return {"uid": f"the harness runs as {h.user}, not root: no privilege drop",
            "cgroup": "per-trial cgroups need root and writable memory and pids controllers",
            "bwrap": h.bwrap_note, "landlock": "the kernel has no Landlock (or it is disabled at boot)",
            "seccomp": "pyseccomp or libseccomp is not installed"}.get(layer, "unavailable")


def installed(h: Host | None = None) -> tuple[str, ...]:
    """This installation's layers: its first probe's record, written now if there is none."""
    from aar_ray.w2s.cache import private_once

    def first_probe() -> str:
        probed = h or host()
        return json.dumps({"layers": list(offered(probed)), "host": probed.describe(), "probed_at": time.time()})

    return tuple(json.loads(private_once(BASELINE_FILE, first_probe))["layers"])


def resolve(cfg: SandboxConfig, h: Host | None = None) -> Requirement:
    """The concrete layers every trial must apply; raises SandboxUnavailable when this host lacks some
    and `cfg.allow_degraded` is off."""
    from aar_ray.w2s.cache import cache_dir

    h = h or host()
    if list(cfg.require) == ["auto"]:
        wanted = installed(h)
        source = f"sandbox.require=[auto]: this installation's first probe, {cache_dir() / 'private' / BASELINE_FILE}"
    else:
        wanted, source = tuple(n for n in SANDBOX_LAYERS if n in cfg.require), "sandbox.require"
    have = offered(h)
    missing = tuple(n for n in wanted if n not in have)
    if missing and not cfg.allow_degraded:
        reasons = "; ".join(f"{n}: {why_not(h, n)}" for n in missing)
        less = [n for n in wanted if n in have]
        raise SandboxUnavailable(
            f"this host cannot apply the required sandbox layers {', '.join(missing)} ({reasons}); required by "
            f"{source}. To accept less, set sandbox.allow_degraded=true (trials then run with "
            f"{', '.join(have)}) or sandbox.require=[{','.join(less)}]")
    return Requirement(tuple(n for n in wanted if n in have), have, missing, source)
