# expect: invalid_output: must return a torch.Tensor
"""Return an object whose unpickling would run code in the harness."""
import os


class Payload:
    def __reduce__(self):
        return (os.system, ("touch __MARKER__",))


def run(ctx):
    return Payload()
