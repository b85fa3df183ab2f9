"""The one tool interface both brains speak, as JSON schemas (the Messages API `tools` format).

`validate(call)` checks a call's input against its schema and returns a readable error string, or
None. A malformed call becomes an error result the brain can recover from, never a crash.
"""
from __future__ import annotations

from typing import Any

import jsonschema

NAME_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"

COMPOSITION_SCHEMA: dict = {
    "type": "object",
    "description": "A method built from building blocks (compiled to a method file by the harness).",
    "properties": {
        "loss": {"enum": ["ce", "confidence", "smoothing", "bootstrap"],
                 "description": "ce: cross-entropy to weak labels; confidence: Burns aux loss; smoothing: labels pulled to 0.5; bootstrap: mix with own predictions"},
        "alpha": {"type": "number", "minimum": 0, "maximum": 1, "description": "confidence: max weight of the student's hardened predictions"},
        "warmup": {"type": "number", "minimum": 0, "maximum": 1, "description": "confidence: share of training over which alpha ramps up"},
        "eps": {"type": "number", "minimum": 0, "maximum": 1, "description": "smoothing strength"},
        "beta": {"type": "number", "minimum": 0, "maximum": 1, "description": "bootstrap: weight of the weak labels"},
        "weighting": {"enum": ["none", "confidence", "reliability"],
                      "description": ("confidence: weight examples by |2w-1|^power; reliability: estimate how far the "
                                      "teacher can be trusted on each input group (first input token) from its "
                                      "agreement with the student, reweight by agreement^power, refit (rounds times)")},
        "power": {"type": "number", "minimum": 0, "maximum": 8},
        "keep": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "description": "train on this share of most confident weak labels"},
        "hard_labels": {"type": "boolean", "description": "threshold weak labels at 0.5"},
        "features": {"enum": ["softmax", "hidden"]},
        "epochs_mult": {"type": "number", "minimum": 0.25, "maximum": 4},
        "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "weight_decay": {"type": "number", "minimum": 0, "maximum": 10},
        "ensemble": {"type": "integer", "minimum": 1, "maximum": 8, "description": "bagged students averaged"},
        "rounds": {"type": "integer", "minimum": 1, "maximum": 4, "description": "self-training rounds (relabel with own predictions)"},
    },
    "additionalProperties": False,
}

TOOLS: list[dict] = [
    {
        "name": "submit_method",
        "description": ("Submit a weak-to-strong method for a trial. Give either `source` (a Python file defining "
                        "run(ctx) -> torch.Tensor of P(label=1) per eval example; see the method interface) or "
                        "`composition` (building blocks). The harness runs it on its own seeds and returns "
                        "validation metrics through get_results. Each scoring uses one query of your budget."),
        "input_schema": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "pattern": NAME_PATTERN},
                "rationale": {"type": "string", "maxLength": 4000},
                "fidelity": {"enum": ["quick", "full"], "description": "quick: fewer steps, for exploration"},
                "source": {"type": "string", "minLength": 10, "maxLength": 100000},
                "composition": COMPOSITION_SCHEMA,
            },
            "required": ["name", "rationale", "fidelity"],
            "oneOf": [{"required": ["source"]}, {"required": ["composition"]}],
            "additionalProperties": False,
        },
    },
    {
        "name": "get_results",
        "description": "Your trials with their status and validation metrics (val PGR mean ± std over the harness's seeds).",
        "input_schema": {"type": "object", "properties": {"trial_id": {"type": "string"}}, "additionalProperties": False},
    },
    {
        "name": "leaderboard",
        "description": "Best methods of all researchers by validation PGR (test numbers are hidden).",
        "input_schema": {"type": "object", "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": 100}},
                         "additionalProperties": False},
    },
    {
        "name": "read_forum",
        "description": "Findings posted by all researchers, newest first.",
        "input_schema": {"type": "object", "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": 100}},
                         "additionalProperties": False},
    },
    {
        "name": "post_finding",
        "description": ("Share a finding with the other researchers. A finding that claims a result must give the "
                        "trial_id of a scored trial (with all its seeds)."),
        "input_schema": {
            "type": "object",
            "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 4000}, "trial_id": {"type": "string"}},
            "required": ["text"],
            "additionalProperties": False,
        },
    },
    {
        "name": "read_method",
        "description": "The source of any submitted method, by its method_id (from the leaderboard or forum).",
        "input_schema": {"type": "object", "properties": {"method_id": {"type": "string", "minLength": 1}},
                         "required": ["method_id"], "additionalProperties": False},
    },
    {
        "name": "finish",
        "description": "End your research with a short summary of what you learned.",
        "input_schema": {"type": "object", "properties": {"summary": {"type": "string", "maxLength": 4000}},
                         "additionalProperties": False},
    },
]
TOOL_NAMES = frozenset(t["name"] for t in TOOLS)
_SCHEMAS = {t["name"]: t["input_schema"] for t in TOOLS}


def validate(name: str, data: Any) -> str | None:
    """None if the call is well formed, else a readable reason naming what is wrong."""
    if name not in TOOL_NAMES:
        return f"unknown tool {name!r}; the tools are {', '.join(sorted(TOOL_NAMES))}"
    try:
        jsonschema.validate(data, _SCHEMAS[name])
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "input"
        msg = e.message
        if e.validator == "oneOf":
            msg = "give exactly one of `source` or `composition`"
        return f"invalid input for {name} at {where}: {msg}"
    return None
