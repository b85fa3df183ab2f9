"""One layout for every family's method file: docstring, imports, FAMILY and constants, then code."""
from __future__ import annotations

import textwrap

WIDTH = 100


def render(family: str, title: str, why: str, constants: list[tuple[str, object, str]], code: list[str]) -> str:
    """A method file. `constants` are (NAME, value, why) rows; `code` the functions, in order."""
    doc = textwrap.fill(why, WIDTH)
    head = f'"""{title}\n\n{doc}\n"""\nimport torch\nimport torch.nn.functional as F\n\nFAMILY = {family!r}\n'
    consts = "".join(f"{name} = {value!r}  # {note}\n" for name, value, note in constants)
    return head + consts + "\n\n" + "\n\n".join(textwrap.dedent(c).strip() + "\n" for c in code)


def param_rows(params: dict, notes: dict[str, str]) -> list[tuple[str, object, str]]:
    """Constant rows of the parameters that matter (`params`), in the family's order of `notes`."""
    return [(k.upper(), params[k], note) for k, note in notes.items() if k in params]
