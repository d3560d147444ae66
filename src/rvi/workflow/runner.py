"""Running one rule: the registry's stage function with the rule's named input/output/params, logged.

Each rule's ``run:`` block is one line, ``run_rule("<stage>", input, output, params, log, threads)``.
The function is looked up in the stage registry (a ``"module:function"`` string, imported only here, when
the job runs). Output goes to the rule's log file, with a short header (stage, interpreter, params) so a
log is self-explanatory; BLAS/OpenMP/torch threads are capped at the rule's ``threads``. Training stages
run in an interruptible child process (:mod:`rvi.interrupt`), with DDP ranks when their config asks
for several devices (:mod:`rvi.distributed`).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Mapping
from contextlib import contextmanager

from rvi._process import redirect_output, resolve, thread_limits
from rvi.interrupt import run_stage_process
from rvi.workflow.registry import get_stage

__all__ = ["run_rule"]


def _plain(value):
    """Snakemake Namedlist / IOFile values -> str or list[str] (stage functions take plain paths)."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _named(namedlist) -> dict:
    if namedlist is None:
        return {}
    return {k: _plain(v) for k, v in namedlist.items()}


@contextmanager
def _logged(stage: str, params: Mapping, threads: int):
    start = time.time()
    print(f"[rvi] stage {stage} (python {sys.executable}, threads {threads})", flush=True)
    print(f"[rvi] params: {json.dumps(params, default=str, sort_keys=True)}", flush=True)
    yield
    print(f"[rvi] stage {stage} done in {time.time() - start:.1f} s", flush=True)


def run_rule(stage: str, input=None, output=None, params=None, log=None, threads: int = 1, wildcards=None):
    """Run the registry function of ``stage`` with a rule's named input/output/params as keywords."""
    st = get_stage(stage)
    kwargs = {**_named(input), **_named(output), **_named(params)}
    if wildcards is not None and stage == "notebook":
        kwargs["name"] = wildcards.notebook
    log_file = _plain(list(log)[0]) if log else None
    outputs = _named(output)
    if st.trains:
        # Training runs in a child process, whose main thread can take SIGINT / SIGTERM (rvi.interrupt).
        with redirect_output(log_file), _logged(stage, _named(params), threads):
            run_stage_process(stage, st.function, kwargs, outputs, threads)
        return
    func = resolve(st.function)
    with redirect_output(log_file), thread_limits(threads), _logged(stage, _named(params), threads):
        try:
            func(**kwargs, threads=int(threads))
        except BaseException:
            # The traceback belongs in the log that the user opens first (Snakemake points to it).
            traceback.print_exc()
            raise
