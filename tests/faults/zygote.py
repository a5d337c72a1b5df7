"""A fork server: imports torch and the command lines once, then forks one process per request.

Starting Python and importing torch takes seconds on a loaded 2-core CI machine; the faults
suite starts about a hundred processes. Each forked child is still a separate process with its
own pid (the test SIGKILLs it), its own stdout/stderr files, working folder and fault points,
and runs the entry script as ``__main__`` exactly as ``python train_search.py ...`` would;
``test_fresh_interpreter_agrees`` checks that against real interpreters.

Protocol, one JSON line per request on stdin::

    {"entry": "train.py", "argv": [...], "spec": {...}, "cwd": "...", "stdout": "...", "stderr": "..."}

answered by ``pid N`` once the child runs and ``rc N`` when it has ended (``-9`` when killed).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # sys.path[0] is this folder, for `wrapper`
from wrapper import run_entry  # noqa: E402

PRELOAD = ("torch", "matplotlib.pyplot", "torch.utils.tensorboard", "fairdarts.search.cli", "fairdarts.train.cli",
           "fairdarts.evaluation.cli", "fairdarts.visualize")


def _preload() -> None:
    import importlib

    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # a missing optional module is imported (and fails) in the child as usual
            pass


def _child(request: dict) -> int:
    os.chdir(request["cwd"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY | os.O_CREAT),
                            (2, request["stderr"], os.O_WRONLY | os.O_CREAT)):
        target = os.open(path, flags, 0o644)
        os.dup2(target, fd)
        os.close(target)
    try:
        run_entry(request["entry"], request["argv"], request["spec"])
        code = 0
    except SystemExit as exc:  # what the interpreter does with it
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # an uncaught exception: traceback and exit 1, as `python script.py` does
        traceback.print_exc()
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def serve() -> None:
    _preload()
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            os._exit(_child(request))
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"rc {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    serve()
