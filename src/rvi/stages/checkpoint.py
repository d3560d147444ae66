"""Resumable training: a checkpoint of the last finished epoch, so an interrupted job continues.

With ``training.checkpoint`` true (the default of the training stages, which are the GPU stages) the
stage saves a Lightning checkpoint at the end of every epoch to a hidden folder next to the model
output (``<model>.resume/``; not an output, so Snakemake's ``--rerun-incomplete`` keeps it) and, when it
finds one made for the same data and settings (a fingerprint of the training cells, genes and the
stage's model / training sections), resumes from it: epoch counter, weights, optimiser, KL warm-up
and early-stopping state. The training history of the earlier epochs travels in the checkpoint, so
``history.csv`` covers every epoch. The folder is removed once the stage's outputs are written.
Single-process training only (a DDP job starts over).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

CHECKPOINT = "last.ckpt"
FINGERPRINT = "fingerprint.json"


def checkpoint_dir(model_path: str, training: Mapping, world: int) -> Path | None:
    """The resume folder of a stage writing its model to ``model_path`` (None when checkpointing is off)."""
    if not training.get("checkpoint", True) or world > 1:
        return None
    model = Path(model_path)
    return model.with_name(f".{model.name}.resume")


def fingerprint(model_cfg: Mapping, training: Mapping, obs_names, var_names, train_idx, val_idx) -> str:
    """Hash of what a checkpoint is only valid for: cells, genes, split and the model / training settings."""
    h = hashlib.sha256()
    h.update(json.dumps([dict(model_cfg), dict(training)], sort_keys=True, default=str).encode())
    for values in (obs_names, var_names):
        h.update("\x1f".join(map(str, values)).encode())
    for idx in (train_idx, val_idx):
        h.update(np.asarray(idx, dtype=np.int64).tobytes())
    return h.hexdigest()


def resume_path(folder: Path | None, key: str) -> str | None:
    """The checkpoint to resume from, if ``folder`` holds one for ``key``; a stale one is removed."""
    if folder is None:
        return None
    ckpt, stamp = folder / CHECKPOINT, folder / FINGERPRINT
    if ckpt.is_file() and stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return str(ckpt)
    if folder.exists():
        print(f"[rvi] checkpoint {folder} was made for other data or settings: starting over", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    return None


def history_to_plain(history: Mapping[str, pd.DataFrame]) -> dict:
    """Logger history -> {key: {epoch: value}} of Python floats (loadable with torch.load(weights_only=True))."""
    out = {}
    for key, frame in history.items():
        if isinstance(frame, pd.DataFrame) and frame.shape[1] >= 1:
            col = pd.to_numeric(frame.iloc[:, 0], errors="coerce")
            out[str(key)] = {int(i): float(v) for i, v in col.items()}
    return out


def epoch_checkpoint(folder: Path, key: str):
    """Lightning callback: save ``folder/last.ckpt`` (atomically) at the end of every training epoch."""
    from lightning.pytorch.callbacks import Callback

    class EpochCheckpoint(Callback):
        def __init__(self):
            self.earlier: dict = {}

        def state_dict(self):
            logger = self._trainer.logger if hasattr(self, "_trainer") else None
            now = history_to_plain(getattr(logger, "history", {}) or {})
            merged = {k: {**self.earlier.get(k, {}), **now.get(k, {})} for k in {*self.earlier, *now}}
            return {"history": merged}

        def load_state_dict(self, state_dict):
            self.earlier = {k: {int(e): v for e, v in d.items()} for k, d in state_dict.get("history", {}).items()}

        def on_train_start(self, trainer, pl_module):
            self._trainer = trainer
            if self.earlier:
                print(f"[rvi] resumed from {folder / CHECKPOINT} at epoch {trainer.current_epoch}", flush=True)

        def on_train_epoch_end(self, trainer, pl_module):
            self._trainer = trainer
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{CHECKPOINT}.tmp"
            trainer.save_checkpoint(str(tmp), weights_only=False)  # full state: optimiser, loops, callbacks
            os.replace(tmp, folder / CHECKPOINT)
            (folder / FINGERPRINT).write_text(json.dumps({"key": key, "epoch": trainer.current_epoch + 1}))

    return EpochCheckpoint()


def full_history(hist: pd.DataFrame, callback) -> pd.DataFrame:
    """Prepend the epochs trained before a resume (kept in the checkpoint) to this run's history table."""
    earlier = getattr(callback, "earlier", None)
    if not earlier:
        return hist
    before = pd.DataFrame({k: pd.Series(v, dtype=float) for k, v in earlier.items()})
    before = before.loc[~before.index.isin(hist.index)]
    table = pd.concat([before, hist]).sort_index()
    table.index.name = "epoch"
    return table


def drop(folder: Path | None) -> None:
    """Remove the resume folder once the stage's outputs are written."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
