"""Multi-GPU (DDP) training inside one Snakemake job: the training stage starts its own ranks.

With ``training: {devices: N, strategy: ddp}`` Lightning would normally launch the extra N - 1
processes by re-running the command line (``sys.argv``) of the current process. In a Snakemake job that
command is ``python -m snakemake --target-jobs ...``: every extra process would re-run the whole job
(cell QC, training, every output, and truncate the job's log). So the training child (:mod:`rvi.interrupt`)
wraps the stage in :func:`ddp_ranks` instead, which works like ``torchrun`` on one node:

* this process becomes rank 0 (``LOCAL_RANK=0`` etc. in its environment, a free ``MASTER_PORT``);
* ranks 1..N-1 are ``python -m rvi.distributed <spec.json>`` processes that run the same stage
  function on the same inputs and config (same cells, genes, split and seed), with their outputs
  pointed at a temporary folder. Lightning sees ``LOCAL_RANK`` (with an explicit
  ``LightningEnvironment``, whatever LSF/SLURM variables the job has) and joins the process group
  instead of launching processes; DDP gives every rank the rank-0 weights and a shard of each epoch;
* after ``Model.train`` a worker rank stops (:class:`DistributedWorkerDone`) without writing anything;
  rank 0 goes on with the latent space, UMAP, metrics and writes every output (atomically, as always);
* a worker that fails makes rank 0 stop the job (instead of waiting for it in a collective until the
  timeout) with the worker's log in the job's log. Worker logs are appended to the job's log at the end.

Each rank loads the inputs itself: the job needs ``mem_mb`` for N copies of the training data.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path

from rvi._process import resolve, thread_limits

__all__ = ["DistributedWorkerDone", "ddp_ranks", "is_worker", "mark_training_done", "world_size"]

#: Set (to the rank) in the environment of the worker ranks started by :func:`ddp_ranks`.
WORKER_ENV = "RVI_DDP_WORKER"
#: The job's temporary DDP folder: every rank keeps its temporary files (Lightning logs) there, so that
#: removing it (on every exit path of :func:`ddp_ranks`) leaves nothing behind, even after a killed rank.
TMP_ENV = "RVI_DDP_TMP"
_RANK_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "RANK", WORKER_ENV, TMP_ENV)
#: Set by rank 0 once Model.train returned: no collective can block it any more.
_TRAINING_DONE = threading.Event()


class DistributedWorkerDone(Exception):
    """Raised in a worker rank once training is over: rank 0 alone writes the stage's outputs."""


def world_size(training: Mapping) -> int:
    """Processes a ``training`` section trains with: the device count under a ``ddp`` strategy, else 1."""
    devices, strategy = training.get("devices", "auto"), str(training.get("strategy", "auto"))
    if not strategy.startswith("ddp") or isinstance(devices, bool):
        return 1
    if isinstance(devices, int):
        return max(devices, 1)
    if isinstance(devices, list | tuple):
        return max(len(devices), 1)
    return 1


def mark_training_done() -> None:
    """Called by the stage when training is over (rank 0 no longer waits for the other ranks)."""
    _TRAINING_DONE.set()


def is_worker() -> bool:
    """True in a worker rank (1..N-1) started by :func:`ddp_ranks`."""
    return bool(os.environ.get(WORKER_ENV))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _rank_environment(values: Mapping[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in _RANK_ENV}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def ddp_ranks(stage: str, function: str, kwargs: Mapping, outputs: Mapping, threads: int = 1):
    """Context for running ``stage`` with ``kwargs`` as rank 0 of a DDP group, when its config asks for one.

    ``function`` is the stage's ``"module:function"`` (the worker ranks run it too); ``kwargs`` are the
    stage function's keyword arguments (inputs, outputs and params, with ``cfg``); ``outputs`` the output
    subset of them, which the worker ranks get as temporary paths. Returns a no-op context for stages
    without a ``training`` section and for single-process training.
    """
    cfg = kwargs.get("cfg") or {}
    section = cfg.get(stage)
    if not isinstance(section, Mapping) or "training" not in section:
        return nullcontext()
    n = world_size(section["training"])
    if n <= 1:
        return nullcontext()
    return _ddp_ranks(stage, function, dict(kwargs), dict(outputs), n, threads)


@contextmanager
def _ddp_ranks(stage: str, function: str, kwargs: dict, outputs: dict, n: int, threads: int) -> Iterator[None]:
    tmp = Path(tempfile.mkdtemp(prefix=f"rvi-ddp-{stage}-"))
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(n),
        "NODE_RANK": "0",
        TMP_ENV: str(tmp),
    }
    workers: list[tuple[int, subprocess.Popen, Path]] = []
    done = threading.Event()
    _TRAINING_DONE.clear()
    # The job's cores: rank 0 keeps them all (it alone computes UMAP, metrics, ... after training);
    # the other ranks share them during training.
    worker_threads = max(1, int(threads) // n)
    try:
        for rank in range(1, n):
            folder = tmp / f"rank{rank}"
            folder.mkdir()
            worker_kwargs = {**kwargs, **{k: str(folder / Path(str(v)).name) for k, v in outputs.items()}}
            spec = folder / "spec.json"
            spec.write_text(
                json.dumps({"stage": stage, "function": function, "kwargs": worker_kwargs, "threads": worker_threads})
            )
            log = folder / "rank.log"
            rank_env = {**os.environ, **env, "LOCAL_RANK": str(rank), "RANK": str(rank), WORKER_ENV: str(rank)}
            rank_env[TMP_ENV] = str(folder)
            with open(log, "w") as fh:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "rvi.distributed", str(spec)],
                    env=rank_env,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    cwd=os.getcwd(),
                )
            workers.append((rank, proc, log))
        print(f"[rvi] DDP: {n} processes (rank 0 = this job, rank(s) 1..{n - 1} started; port {env['MASTER_PORT']})")

        def watch() -> None:
            # A rank that dies during training leaves rank 0 waiting in a collective until the timeout:
            # stop the job. After training, failures are reported when the ranks are collected below.
            while not done.wait(1.0) and not _TRAINING_DONE.is_set():
                for rank, proc, log in workers:
                    code = proc.poll()
                    if code not in (None, 0):
                        print(f"[rvi] DDP rank {rank} failed (exit {code}); its log:\n{_tail(log)}", flush=True)
                        sys.stdout.flush()
                        sys.stderr.flush()
                        # os._exit skips the finally below: stop the other ranks and remove the folder here.
                        for _, other, _ in workers:
                            if other.poll() is None:
                                other.kill()
                        shutil.rmtree(tmp, ignore_errors=True)
                        os._exit(1)

        watcher = threading.Thread(target=watch, name="rvi-ddp-watchdog", daemon=True)
        watcher.start()
        with _rank_environment({**env, "LOCAL_RANK": "0", "RANK": "0"}):
            yield
        done.set()
        failed = []
        for rank, proc, log in workers:
            try:
                code = proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = "killed after 600 s"
            if code != 0:
                failed.append(f"rank {rank} (exit {code}):\n{_tail(log)}")
        if failed:
            raise RuntimeError("DDP worker rank(s) failed after training:\n" + "\n".join(failed))
    finally:
        done.set()
        for _, proc, _ in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for rank, _, log in workers:
            print(f"[rvi] ---- DDP rank {rank} log ----\n{_tail(log, n=400)}", flush=True)
        _destroy_process_group()
        shutil.rmtree(tmp, ignore_errors=True)


def _destroy_process_group() -> None:
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """Worker rank: run the stage of ``spec.json`` until its training is over."""
    from rvi import distributed  # not __main__'s copy: models.py raises that module's class

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not os.environ.get(WORKER_ENV):
        print("usage: python -m rvi.distributed <spec.json> (started by rvi.distributed.ddp_ranks)")
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    rank = os.environ[WORKER_ENV]
    start = time.time()
    print(f"[rvi] DDP rank {rank}: stage {spec['stage']} (python {sys.executable})", flush=True)
    with thread_limits(spec["threads"]):
        try:
            resolve(spec["function"])(**spec["kwargs"], threads=spec["threads"])
        except distributed.DistributedWorkerDone:
            print(f"[rvi] DDP rank {rank}: training done in {time.time() - start:.1f} s", flush=True)
            _destroy_process_group()
            return 0
    print(f"[rvi] DDP rank {rank}: stage {spec['stage']} returned without training", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
