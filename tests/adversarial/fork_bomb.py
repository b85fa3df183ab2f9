# expect: pids_limit: process limit
"""The classic: every process forks forever."""
import os


def run(ctx):
    while True:
        os.fork()
