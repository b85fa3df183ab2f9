"""The trial contract: one typed request in, one typed outcome out, at every process boundary.

    scorer --TrialRequest--> pool --> run_trial (a Ray worker) --> sandbox runner --files--> child
    scorer <--TrialOutcome-- pool <-- run_trial               <-- runner <--plain-array record--

The scorer builds one `TrialRequest` per (trial, seed set); it travels unchanged (Ray pickles the
frozen dataclass) to the sandbox runner, which writes it to the trial's input folder with
`TrialRequest.write` and the child reads it back with `TrialRequest.read`: the one place it is
serialised. Every field is required: a request that lacks the device, the dtype or a limit does not
exist, so nothing downstream can fall back to a default (the bug that ran GPU trials on the CPU).
What comes back is a `TrialOutcome` whose `status` is a `TrialStatus`, never a bare string.

No torch at module level: the sandbox launcher imports this package and must start fast.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from aar_ray.config import RECIPES, SANDBOX_LAYERS, FinetuneConfig, ProbeConfig

if TYPE_CHECKING:
    import torch

INPUT_KEYS = ("train_ids", "train_mask", "weak_labels", "eval_ids", "eval_mask")
REQUEST_FILE, INPUTS_FILE = "request.json", "inputs.pt"
REQUEST_FORMAT = "aar-trial-request-v1"
DTYPES = ("float32", "bfloat16", "float16")
MAX_SEEDS = 256


class TrialStatus(str, Enum):
    """How a trial ended. The first group is the sandbox's verdict on the method; the second is the
    harness's (pool, scorer)."""

    OK = "ok"  # predictions for every seed passed validation
    REJECTED = "rejected"  # the static pre-check refused the source (nothing ran)
    FAILED = "failed"  # run(ctx) raised, or the method file is broken
    INVALID_OUTPUT = "invalid_output"  # not a finite float tensor of shape (N_eval,) in [0, 1]
    TIMEOUT = "timeout"  # a wall-clock limit (the sandbox's or the pool's); every process was killed
    CPU_LIMIT = "cpu_limit"  # CPU-seconds rlimit
    MEMORY_LIMIT = "memory_limit"  # address-space rlimit or the cgroup OOM killer
    PIDS_LIMIT = "pids_limit"  # hit the process limit (fork bomb) and died of it
    CRASHED = "crashed"  # killed by a signal (segfault, abort, a forbidden syscall)
    LEFTOVER_PROCESSES = "leftover_processes"  # run() returned but left processes behind
    SANDBOX_ERROR = "sandbox_error"  # the harness could not start or trust the sandbox: not the method's fault
    CANCELLED = "cancelled"  # the campaign cancelled it (winding down)
    REFUSED = "refused"  # the scorer refused to score it (query budget spent)
    LOST = "lost"  # its worker or node died past the retries, or it could not be scheduled

    @property
    def harness_fault(self) -> bool:
        """The harness's fault, not the method's: worth retrying, never held against the method."""
        return self in (TrialStatus.SANDBOX_ERROR, TrialStatus.LOST)


def layer_names(layers: Iterable[str]) -> tuple[str, ...]:
    """The SANDBOX_LAYERS named in a detailed layer list ("uid:aar-sandbox(999)", "seccomp(...)"), in
    SANDBOX_LAYERS order: what a requirement is checked against and what a trial's run is tagged with."""
    names = {layer.split("(")[0].split(":")[0] for layer in layers}
    return tuple(n for n in SANDBOX_LAYERS if n in names)


class TrialState(str, Enum):
    """A trial's row on the forum: where it is in its life, as researchers see it."""

    QUEUED = "queued"  # submitted; its job waits for or runs on a worker
    SCORED = "scored"  # the scorer returned validation numbers
    FAILED = "failed"  # no score: the method (or the harness) failed; the row's error says how
    REFUSED = "refused"  # no score: the researcher's query budget was spent
    CANCELLED = "cancelled"  # no score: the campaign wound down before it ran

    @property
    def pending(self) -> bool:
        return self is TrialState.QUEUED

    @classmethod
    def of(cls, status: TrialStatus) -> "TrialState":
        """The forum state of a trial that ended with `status`."""
        return {TrialStatus.OK: cls.SCORED, TrialStatus.REFUSED: cls.REFUSED,
                TrialStatus.CANCELLED: cls.CANCELLED}.get(status, cls.FAILED)


@dataclass(frozen=True)
class StudentSpec:
    """The strong student a trial loads: where, which weights, on which device, in which dtype."""

    path: str
    """A from_pretrained-loadable directory (weights and tokenizer)."""
    key: str
    """Content key of its weights."""
    device: str
    """'cpu', 'cuda' or 'cuda:N': where the child loads it (on a GPU trial, one of the GPUs Ray assigned)."""
    dtype: str
    """One of DTYPES: the dtype the child loads it in."""

    def __post_init__(self) -> None:
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ValueError(f"StudentSpec.device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"StudentSpec.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not self.path:
            raise ValueError("StudentSpec.path is empty")


@dataclass(frozen=True)
class SeedInputs:
    """What a method receives for one seed: inputs and weak labels, never a ground-truth label."""

    seed: int
    train_ids: "torch.Tensor"
    """(N_b, T) the student's training inputs (half B)."""
    train_mask: "torch.Tensor"
    """(N_b, T) their attention mask."""
    weak_labels: "torch.Tensor"
    """(N_b,) the weak supervisor's soft labels."""
    eval_ids: "torch.Tensor"
    """(N_e, T) unlabelled evaluation inputs (validation and test, mixed)."""
    eval_mask: "torch.Tensor"
    """(N_e, T) their attention mask."""

    def __post_init__(self) -> None:
        import torch

        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"SeedInputs.seed must be an int, got {self.seed!r}")
        bad = [k for k in INPUT_KEYS if not isinstance(getattr(self, k), torch.Tensor)]
        if bad:
            raise ValueError(f"inputs of seed {self.seed} lack tensors {bad}")

    @property
    def n_eval(self) -> int:
        return int(self.eval_ids.shape[0])

    def tensors(self) -> dict[str, "torch.Tensor"]:
        return {k: getattr(self, k) for k in INPUT_KEYS}


@dataclass(frozen=True)
class TrialLimits:
    """Resource limits of one trial, set by the harness (config `trial.*`), enforced by the sandbox."""

    seed_timeout_s: float
    """Wall clock per seed; the whole run gets seed_timeout_s x seeds."""
    memory_mb: int
    """Address-space limit per process (and the cgroup cap when no other is set)."""
    threads: int
    """torch threads, and the cgroup CPU quota in cores."""

    def __post_init__(self) -> None:
        if not self.seed_timeout_s > 0:
            raise ValueError(f"TrialLimits.seed_timeout_s must be > 0, got {self.seed_timeout_s}")
        if self.memory_mb < 64 or self.threads < 1:
            raise ValueError(f"TrialLimits needs memory_mb >= 64 and threads >= 1, got {self.memory_mb}, {self.threads}")


@dataclass(frozen=True)
class TrialRequest:
    """Everything one trial (a method on each of the harness's seeds) needs, and nothing it must not see."""

    seeds: tuple[SeedInputs, ...]
    """Per-seed inputs, in the order the child runs them."""
    student: StudentSpec
    """The strong student, with its device and dtype."""
    probe: ProbeConfig
    """The probe recipe's settings (the method's starting point under recipe 'probe')."""
    recipe: str
    """The preset's recipe, the one the baselines used: 'probe', 'lora' or 'full' (what ctx.fit trains)."""
    finetune: FinetuneConfig
    """The fine-tuning recipe's settings (recipes 'lora' and 'full')."""
    fidelity: str
    """'quick' or 'full'."""
    batch_size: int
    """Examples per forward pass when reading features."""
    limits: TrialLimits
    """Time, memory and threads."""

    def __post_init__(self) -> None:
        if not 1 <= len(self.seeds) <= MAX_SEEDS:
            raise ValueError(f"a trial needs 1 to {MAX_SEEDS} seeds, got {len(self.seeds)}")
        numbers = [s.seed for s in self.seeds]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"a trial repeats a seed: {numbers}")
        if self.recipe not in RECIPES:
            raise ValueError(f"TrialRequest.recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.fidelity not in ("quick", "full"):
            raise ValueError(f"TrialRequest.fidelity must be 'quick' or 'full', got {self.fidelity!r}")
        if self.batch_size < 1:
            raise ValueError(f"TrialRequest.batch_size must be >= 1, got {self.batch_size}")

    @property
    def seed_numbers(self) -> list[int]:
        return [s.seed for s in self.seeds]

    @property
    def timeout_s(self) -> float:
        """The whole run's wall clock: one child runs every seed."""
        return self.limits.seed_timeout_s * len(self.seeds)

    def replace(self, **changes: Any) -> "TrialRequest":
        return dataclasses.replace(self, **changes)

    # ---- the one serialisation, where the request crosses into the sandboxed child ----

    def to_json(self) -> dict:
        """Every field but the tensors (those go to INPUTS_FILE), as JSON."""
        return {"format": REQUEST_FORMAT, "seeds": self.seed_numbers, "student": dataclasses.asdict(self.student),
                "probe": dataclasses.asdict(self.probe), "recipe": self.recipe,
                "finetune": dataclasses.asdict(self.finetune), "fidelity": self.fidelity, "batch_size": self.batch_size,
                "limits": dataclasses.asdict(self.limits)}

    def write(self, directory: str | os.PathLike) -> None:
        """REQUEST_FILE and INPUTS_FILE in `directory`. (A sandbox shows the student's files at a path
        of its own; the sandbox's plan, not the request, says where.)"""
        import torch

        d = Path(directory)
        meta = self.to_json()
        # one file for all seeds; tensors shared between seeds are stored once (torch.save dedups storages)
        torch.save({f"{s.seed}.{k}": v.detach().cpu().contiguous() for s in self.seeds for k, v in s.tensors().items()},
                   d / INPUTS_FILE)
        (d / REQUEST_FILE).write_text(json.dumps(meta))

    @classmethod
    def read(cls, directory: str | os.PathLike) -> "TrialRequest":
        """The request `write` left in `directory`. A missing or unknown field raises: no defaults."""
        import torch

        d = Path(directory)
        meta = json.loads((d / REQUEST_FILE).read_text())
        if meta.get("format") != REQUEST_FORMAT:
            raise ValueError(f"{d / REQUEST_FILE} is not a {REQUEST_FORMAT} request")
        flat = torch.load(d / INPUTS_FILE, weights_only=True)
        seeds = tuple(SeedInputs(int(s), **{k: flat[f"{int(s)}.{k}"] for k in INPUT_KEYS}) for s in meta["seeds"])
        return cls(seeds=seeds, student=StudentSpec(**meta["student"]), probe=ProbeConfig(**meta["probe"]),
                   recipe=meta["recipe"], finetune=FinetuneConfig(**meta["finetune"]), fidelity=meta["fidelity"],
                   batch_size=meta["batch_size"], limits=TrialLimits(**meta["limits"]))


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended. Predictions and losses are present only when `status` is OK."""

    status: TrialStatus
    reason: str
    """Readable: what happened, naming the seed a failure is about ("seed 1: ...") on multi-seed trials."""
    layers: tuple[str, ...]
    """Sandbox layers that applied (empty when nothing ran)."""
    device: str
    """The device the child used for the student ('' when no child ran)."""
    dtype: str
    """The dtype the child used for the student ('' when no child ran)."""
    preds: Mapping[int, "torch.Tensor"] = field(default_factory=dict)
    """seed -> (N_eval,) float32 P(label = 1), in the order of that seed's eval inputs."""
    losses: Mapping[int, tuple[tuple[int, float], ...]] = field(default_factory=dict)
    """seed -> (step, training loss) pairs the method recorded."""
    wall_s: float = 0.0
    cpu_s: float = 0.0
    log_tail: str = ""
    """The end of the child's stderr and stdout (for a failure's diagnosis)."""
    timings: Mapping[str, float] = field(default_factory=dict)
    """The child's own (untrusted) phase timings."""
    failed_seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.status, TrialStatus):
            raise ValueError(f"TrialOutcome.status must be a TrialStatus, got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status is TrialStatus.OK

    def job(self) -> dict:
        """What the run reports of the hardware it used: device, dtype, peak GPU memory (MiB), samples/s."""
        return {"device": self.device, "dtype": self.dtype, "peak_gpu_mb": self.timings.get("peak_gpu_mb"),
                "samples_per_s": self.timings.get("samples_per_s")}

    @property
    def sandbox(self) -> tuple[str, ...]:
        """The SANDBOX_LAYERS that applied (see `layers` for the details)."""
        return layer_names(self.layers)

    def summary(self) -> dict:
        """JSON-safe: everything but the predictions."""
        return {"status": self.status.value, "reason": self.reason, "layers": list(self.layers), "device": self.device,
                "dtype": self.dtype, "losses": {s: len(v) for s, v in self.losses.items()}, "wall_s": self.wall_s,
                "cpu_s": self.cpu_s, "timings": dict(self.timings), "failed_seed": self.failed_seed}

    @classmethod
    def failure(cls, status: TrialStatus, reason: str, layers: tuple[str, ...] = ()) -> "TrialOutcome":
        """An outcome decided before or outside the sandboxed child (no device was used)."""
        return cls(status, reason, tuple(layers), device="", dtype="")
