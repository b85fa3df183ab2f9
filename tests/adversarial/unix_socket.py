# expect: failed: (PermissionError|FileNotFoundError)
"""Talk to a host daemon over a named unix socket (a Ray raylet or docker socket, say)."""
import socket

import torch


def run(ctx):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("__UNIX_SOCK__")
    s.sendall(b"LEAK")
    return torch.full((len(ctx.eval_ids),), 0.5)
