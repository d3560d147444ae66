"""Interruptible training jobs: Ctrl-C or a scheduler's SIGTERM stops a training stage within one minibatch.

Snakemake runs a rule's ``run:`` block in a worker thread of the job process (``python -m snakemake
--target-jobs ...``). Python delivers signals to the main thread only, and only the main thread may
install handlers, so a SIGINT or SIGTERM never reached the training loop: the job trained on to
``max_epochs`` (and then had its outputs discarded as incomplete), or outlived Snakemake as an orphan.

:func:`run_stage_process` (used by :func:`rvi.workflow.runner.run_rule` for the training stages) therefore
runs the stage in a child process of its own. In the child's main thread :func:`install_handlers`
turns SIGINT / SIGTERM into :class:`StageInterrupted`, raised at once (Python runs handlers between
bytecodes, so at most the current minibatch's operation finishes). The exception is not a
KeyboardInterrupt, which Lightning would swallow: Lightning tears the trainer down and re-raises it.
Nothing is written after it (outputs are written atomically, at the end), the log says that the job
was interrupted and by which signal, DDP ranks are stopped, and the child exits with 128 + signal.
The child also gets SIGTERM when the job process dies (Linux ``PR_SET_PDEATHSIG``), so it is never
left running on its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from rvi._process import resolve, thread_limits
from rvi.distributed import ddp_ranks

__all__ = ["StageInterrupted", "install_handlers", "run_stage_process"]

#: Set in the environment of the child process that runs the stage.
CHILD_ENV = "RVI_STAGE_CHILD"


class StageInterrupted(BaseException):
    """SIGINT / SIGTERM received while a stage ran (a BaseException, like KeyboardInterrupt, but not one)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")


def _raise(signum, frame) -> None:
    # Further signals during the clean-up must not interrupt it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise StageInterrupted(signum)


def install_handlers() -> None:
    """Make SIGINT and SIGTERM raise :class:`StageInterrupted` (main thread only)."""
    signal.signal(signal.SIGINT, _raise)
    signal.signal(signal.SIGTERM, _raise)


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (no orphan training on after the job is gone)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


def run_stage_process(stage: str, function: str, kwargs: dict, outputs: dict, threads: int) -> None:
    """Run ``stage`` (its ``"module:function"``) in a child process (output to this process's stdout/stderr,
    i.e. the job's log).

    Raises RuntimeError when the child fails or is interrupted; the child's log lines say why.
    """
    spec = json.dumps(
        {"stage": stage, "function": function, "kwargs": kwargs, "outputs": outputs, "threads": int(threads)}
    )
    sys.stdout.flush()
    sys.stderr.flush()
    env = {**os.environ, CHILD_ENV: "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rvi.interrupt"], stdin=subprocess.PIPE, env=env)
    try:
        proc.stdin.write(spec.encode())
        proc.stdin.close()
        code = proc.wait()
    except BaseException:
        # This job is going away (e.g. Snakemake shutting down): stop the stage, never leave it running.
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    if code != 0:
        why = f"interrupted by {signal.Signals(code - 128).name}" if 128 < code < 128 + 32 else f"failed (exit {code})"
        raise RuntimeError(f"stage {stage} {why}: no output was written (the log above has the details)")


def _child_main() -> int:
    import traceback

    install_handlers()
    _die_with_parent()
    spec = json.loads(sys.stdin.read())
    stage, kwargs, threads = spec["stage"], spec["kwargs"], spec["threads"]
    start = time.time()
    try:
        func = resolve(spec["function"])
        with thread_limits(threads), ddp_ranks(stage, spec["function"], kwargs, spec["outputs"], threads):
            func(**kwargs, threads=threads)
    except StageInterrupted as exc:
        print(
            f"[rvi] stage {stage} {exc} after {time.time() - start:.1f} s: stopped, no output written "
            "(rerun with --rerun-incomplete)",
            flush=True,
        )
        return 128 + exc.signum
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        return 1
    return 0


if __name__ == "__main__":
    code = _child_main()
    sys.stdout.flush()
    sys.stderr.flush()
    if code > 128:
        os._exit(code)  # interrupted: skip the interpreter's slow teardown (torch threads, DataLoader)
    sys.exit(code)
