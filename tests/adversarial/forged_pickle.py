# expect: invalid_output: not a aar-preds-v\d record
"""Write a malicious pickle straight into the result fd, then exit before the child does."""
import os
import pickle


class Payload:
    def __reduce__(self):
        return (os.system, ("touch __MARKER__",))


def run(ctx):
    with os.fdopen(3, "wb") as f:  # the result fd the harness reads
        f.write(pickle.dumps({"preds": Payload()}))
    os._exit(0)
