"""What every job process needs around a stage function: its log file, thread limits, the function itself.

Used by the rule runner (:mod:`rvi.workflow.runner`), the interruptible training child
(:mod:`rvi.interrupt`) and the DDP worker ranks (:mod:`rvi.distributed`). Standard library only, so
that parsing the Snakefile stays fast and nothing here imports the workflow or the stages back.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from rvi._logging import SkipSelfPrinting, quiet_third_party_logs

__all__ = ["redirect_output", "resolve", "thread_limits"]

_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "RAYON_NUM_THREADS")


def resolve(target: str) -> Callable:
    """The object a ``"package.module:name"`` string names (a stage function, a model class)."""
    module, _, name = target.partition(":")
    if not module or not name:
        raise ValueError(f"expected 'package.module:name', got {target!r}")
    return getattr(importlib.import_module(module), name)


@contextmanager
def redirect_output(log_file: str | os.PathLike | None):
    """Send this process's stdout/stderr (Python and C level: numba, torch, SnapATAC2) to ``log_file``."""
    if not log_file:
        yield
        return
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, "w", buffering=1) as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        root = logging.getLogger()
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(SkipSelfPrinting())
        quiet_third_party_logs()
        root.addHandler(handler)
        level = root.level
        root.setLevel(logging.INFO)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            root.removeHandler(handler)
            root.setLevel(level)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextmanager
def thread_limits(threads: int):
    """Cap BLAS/OpenMP/numba/Rayon/torch threads at the rule's ``threads`` (jobs share the machine)."""
    threads = max(int(threads), 1)
    old = {k: os.environ.get(k) for k in _THREAD_ENV}
    os.environ.update({k: str(threads) for k in _THREAD_ENV})
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=threads)
    except ImportError:  # threadpoolctl comes with scikit-learn; without it the env vars still apply
        limiter = None
    try:
        yield
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
