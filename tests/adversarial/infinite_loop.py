# expect: cpu_limit: CPU limit
"""Spin forever."""


def run(ctx):
    x = 0
    while True:
        x += 1
