"""rvi: regularized variational inference for single-cell atlas integration."""

from importlib import import_module

__version__ = "0.1.0"

# The models pull in torch and scvi-tools; import them lazily so that light helpers
# (io, qc, workflow config validation) stay fast to import inside Snakemake.
_LAZY = {
    "AmbientRegularizedSCVI": "rvi.models",
    "RegularizedMultimodalVI": "rvi.models",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rvi' has no attribute {name!r}")
