"""Quiet, single-copy logs: third-party advertising and repeated lines stay out of users' log files."""

from __future__ import annotations

import logging

#: Messages that say nothing about the run (Lightning's product tips, scvi-tools' "already downloaded"
#: when a saved model is read from disk).
_NOISE = ("💡 Tip:", "already downloaded", "litlogger")


class DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(token in message for token in _NOISE)


class SkipSelfPrinting(DropNoise):
    """For a root handler: skip records that a handler on their own logger chain prints already
    (Lightning and scvi-tools install their own), so each line appears once."""

    def filter(self, record: logging.LogRecord) -> bool:
        log = logging.getLogger(record.name)
        while log is not None and log is not logging.root:
            if log.handlers:
                return False
            if not log.propagate:
                break
            log = log.parent
        return super().filter(record)


def quiet_third_party_logs() -> None:
    """Drop the noise from the handlers Lightning and scvi-tools install, and jax's backend probing."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "scvi"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, DropNoise) for f in handler.filters):
                handler.addFilter(DropNoise())
    # jax logs every accelerator backend it fails to find (TPU, CUDA) at WARNING when scib-metrics loads it.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
