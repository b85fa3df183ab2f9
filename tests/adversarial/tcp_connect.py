# expect: failed: (PermissionError|ConnectionRefusedError|OSError)
"""Send the weak labels to a TCP server on 127.0.0.1 (the test runs one)."""
import socket

import torch


def run(ctx):
    s = socket.create_connection(("127.0.0.1", __TCP_PORT__), timeout=3)
    s.sendall(b"LEAK " + str(ctx.weak_labels[:4].tolist()).encode())
    s.close()
    return torch.full((len(ctx.eval_ids),), 0.5)
