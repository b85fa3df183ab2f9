# expect: failed: (PermissionError|OSError)
"""Exfiltrate over UDP to 127.0.0.1 (the test listens)."""
import socket

import torch


def run(ctx):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(5):
        s.sendto(b"LEAK", ("127.0.0.1", __UDP_PORT__))
    return torch.full((len(ctx.eval_ids),), 0.5)
