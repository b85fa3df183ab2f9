"""Secrets (the Claude API key, MLflow credentials) in memory only: never in a file, log or runtime env.

Ray logs every runtime_env it creates (`runtime_env_agent.log`, at INFO), and the processes of a
local Ray inherit the environment of the driver that started it. So the driver
1. starts its local Ray with the secrets taken out of its environment (`withheld()`), and never puts
   one into a runtime_env;
2. serves them from a named actor, the vault (`start_vault`), which lives in memory and dies with the
   driver;
3. a process that needs a secret asks for it: the researcher for the API key (`get`), an MLflow client
   in an actor for its credentials (`install_mlflow_credentials`).
Every secret a process knows also feeds redaction (`scrub`, `known_values`).
On a cluster whose nodes were started with the variables set (see infra/), a process finds them in
its own environment and the vault is only a fallback.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

ANTHROPIC_KEY = "ANTHROPIC_API_KEY"
MLFLOW_SECRETS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
SECRETS = (ANTHROPIC_KEY, "ANTHROPIC_AUTH_TOKEN", *MLFLOW_SECRETS)
"""Environment variables that are secrets: never in a runtime_env, never inherited by Ray."""
VAULT = "aar-vault"  # the named actor, in the campaign's namespace
ASK = "AAR_VAULT"  # set (to VAULT) in a campaign's worker env when it has a vault: only then is it asked

_known: dict[str, str] = {}  # name -> value this process has seen (for `scrub`)
_given: dict[str, str] = {}  # name -> value the vault gave this process


class Vault:
    """The actor that holds a campaign's secrets in memory and hands them to its own actors."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}

    def put(self, values: dict[str, str]) -> None:
        self._values.update(values)

    def get(self, name: str) -> str | None:
        return self._values.get(name)


def from_env() -> dict[str, str]:
    """The secrets set in this process's environment (and remembered for `scrub`)."""
    found = {k: os.environ[k] for k in SECRETS if os.environ.get(k)}
    _known.update(found)
    return found


@contextlib.contextmanager
def withheld() -> Iterator[dict[str, str]]:
    """Take the secrets out of this process's environment for the block (e.g. while `ray.init` starts
    the raylet, which every worker inherits its environment from), then put them back."""
    found = from_env()
    for k in found:
        del os.environ[k]
    try:
        yield found
    finally:
        os.environ.update(found)


def start_vault(values: dict[str, str]):
    """The named vault actor of this Ray namespace, holding `values` (call after `ray.init`)."""
    import ray

    vault = ray.remote(num_cpus=0)(Vault).options(name=VAULT, get_if_exists=True).remote()
    ray.get(vault.put.remote(values))  # a method argument: inline in one gRPC message, never in a runtime_env
    return vault


def _from_vault(name: str) -> str | None:
    if not os.environ.get(ASK):
        return None
    try:
        import ray

        if not ray.is_initialized():
            return None
        return ray.get(ray.get_actor(os.environ[ASK]).get.remote(name))
    except (ImportError, ValueError):  # no Ray, or no vault in this namespace
        return None


def get(name: str) -> str:
    """A secret's value: from this process's environment, else from the vault; '' if neither has it."""
    value = os.environ.get(name) or _given.get(name) or _from_vault(name) or ""
    if value:
        _known[name] = value
        if name not in os.environ:
            _given[name] = value
    return value


def install_mlflow_credentials() -> None:
    """Put MLflow's credentials into this process's environment (MLflow reads them there, per request)
    when it lacks them and the campaign's vault has them. Memory only; a no-op outside a campaign."""
    for name in MLFLOW_SECRETS:
        if not os.environ.get(name):
            value = _from_vault(name)
            if value:
                _known[name] = _given[name] = value
                os.environ[name] = value


def known_values() -> list[str]:
    """Every secret value this process knows, longest first (so no secret is half-replaced)."""
    values = set(_known.values()) | {os.environ[k] for k in SECRETS if os.environ.get(k)}
    return sorted((v for v in values if len(v) >= 6), key=len, reverse=True)


def scrub(text: str) -> str:
    """`text` with every known secret replaced by ***."""
    for value in known_values():
        text = text.replace(value, "***")
    return text
