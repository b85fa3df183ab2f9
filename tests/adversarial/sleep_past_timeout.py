# expect: timeout: wall-clock limit
"""Sleep past the wall-clock limit."""
import time


def run(ctx):
    time.sleep(3600)
