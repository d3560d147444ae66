"""Purpose-based covariate keys: resolution (library_key fan-out) and validation against obs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rvi.nesting import check_library_nesting

_EXPLICIT_FANOUT = ("ambient_covariate_keys", "dispersion_key", "library_size_key")


@dataclass
class CovariateSpec:
    """Which obs column serves which purpose, after the library_key fan-out."""

    library_key: str | None
    dataset_key: str | None
    technical_covariate_keys: list[str]
    ambient_covariate_keys: list[str]
    nn_conditioning_covariate_keys: list[str]
    nn_continuous_covariate_keys: list[str]
    feature_scaling_covariate_keys: list[str]
    dispersion_key: str | None
    library_size_key: str | None
    encoder_covariate_keys: list[str] = field(default_factory=list)

    @property
    def categorical_columns(self) -> list[str]:
        """Ordered unique categorical columns registered in the joint categorical field."""
        keys = [self.library_key, self.dataset_key, *self.technical_covariate_keys, *self.ambient_covariate_keys]
        keys += [*self.nn_conditioning_covariate_keys, *self.feature_scaling_covariate_keys]
        keys += [self.dispersion_key, self.library_size_key, *self.encoder_covariate_keys]
        return list(dict.fromkeys(k for k in keys if k is not None))

    def column_indices(self) -> dict:
        """Purpose -> index (or indices) into ``categorical_columns``, as the module expects."""
        pos = {k: i for i, k in enumerate(self.categorical_columns)}
        one = lambda k: None if k is None else pos[k]  # noqa: E731
        return {
            "ambient": [pos[k] for k in self.ambient_covariate_keys],
            "nn_conditioning": [pos[k] for k in self.nn_conditioning_covariate_keys],
            "feature_scaling": [pos[k] for k in self.feature_scaling_covariate_keys],
            "encoder": [pos[k] for k in self.encoder_covariate_keys],
            "dispersion": one(self.dispersion_key),
            "library_size": one(self.library_size_key),
        }


def _as_key_list(value, name: str) -> list[str]:
    if value is None or value is False:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        for v in value:
            if not isinstance(v, str):
                raise TypeError(f"{name} must be a list of obs column names; got element {v!r}.")
        return list(value)
    raise TypeError(f"{name} must be a column name or a list of column names, got {type(value).__name__}.")


def _as_key(value, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one obs column name, got {value!r}.")
    return value


def resolve_covariate_keys(
    library_key=None,
    batch_key=None,
    dataset_key=None,
    technical_covariate_keys=None,
    ambient_covariate_keys=None,
    nn_conditioning_covariate_keys=None,
    nn_continuous_covariate_keys=None,
    feature_scaling_covariate_keys=None,
    dispersion_key=None,
    library_size_key=None,
    encoder_covariate_keys=False,
) -> CovariateSpec:
    """Apply the one-key-per-purpose rules of docs/model.md ("Covariates")."""
    if isinstance(encoder_covariate_keys, str) and encoder_covariate_keys.strip().lower() in ("true", "false"):
        raise TypeError(
            f"encoder_covariate_keys={encoder_covariate_keys!r} is a string where a bool (False) or a list of "
            "column names is expected (papermill -r passes strings; use -p or a YAML boolean)."
        )
    if encoder_covariate_keys is True:
        raise TypeError("encoder_covariate_keys=True is ambiguous: pass False or a list of obs column names.")
    if library_key is not None and batch_key is not None:
        raise ValueError("Give library_key or its alias batch_key, not both.")
    if batch_key is not None:
        explicit = {
            "ambient_covariate_keys": ambient_covariate_keys,
            "dispersion_key": dispersion_key,
            "library_size_key": library_size_key,
        }
        given = [k for k, v in explicit.items() if v is not None]
        if given:
            raise ValueError(
                f"batch_key is a backward-compatible alias that fans out to {', '.join(_EXPLICIT_FANOUT)}; "
                f"it cannot be combined with explicit {', '.join(given)}. Use library_key instead."
            )
        library_key = batch_key
    library_key = _as_key(library_key, "library_key")
    dataset_key = _as_key(dataset_key, "dataset_key")
    if library_key is not None and library_key == dataset_key:
        raise ValueError(
            f"library_key and dataset_key are both {library_key!r}: one column cannot be the finest technical "
            "unit and the study grouping at once. Give dataset_key only when several libraries form a dataset "
            "(or leave it out)."
        )
    ambient = _as_key_list(ambient_covariate_keys, "ambient_covariate_keys")
    if ambient_covariate_keys is None and library_key is not None:
        ambient = [library_key]
    nn_cond = _as_key_list(nn_conditioning_covariate_keys, "nn_conditioning_covariate_keys")
    scaling = _as_key_list(feature_scaling_covariate_keys, "feature_scaling_covariate_keys")
    if feature_scaling_covariate_keys is None:
        scaling = list(nn_cond)
    dispersion_key = _as_key(dispersion_key, "dispersion_key")
    library_size_key = _as_key(library_size_key, "library_size_key")
    return CovariateSpec(
        library_key=library_key,
        dataset_key=dataset_key,
        technical_covariate_keys=_as_key_list(technical_covariate_keys, "technical_covariate_keys"),
        ambient_covariate_keys=ambient,
        nn_conditioning_covariate_keys=nn_cond,
        nn_continuous_covariate_keys=_as_key_list(nn_continuous_covariate_keys, "nn_continuous_covariate_keys"),
        feature_scaling_covariate_keys=scaling,
        dispersion_key=library_key if dispersion_key is None else dispersion_key,
        library_size_key=library_key if library_size_key is None else library_size_key,
        encoder_covariate_keys=_as_key_list(encoder_covariate_keys, "encoder_covariate_keys"),
    )


def validate_obs(obs: pd.DataFrame, spec: CovariateSpec, table: str = "obs") -> None:
    """Keys exist, no NaN, continuous columns numeric, and each library in exactly one dataset."""
    for key in spec.categorical_columns + spec.nn_continuous_covariate_keys:
        if key not in obs.columns:
            raise KeyError(f"Covariate key {key!r} is not a column of {table}; available: {list(obs.columns)}.")
        n_nan = int(pd.isna(obs[key]).sum())
        if n_nan:
            raise ValueError(f"Covariate column {key!r} of {table} has {n_nan} missing (NaN) values.")
    for key in spec.nn_continuous_covariate_keys:
        if not pd.api.types.is_numeric_dtype(obs[key]):
            raise TypeError(f"Continuous covariate {key!r} of {table} is not numeric (dtype {obs[key].dtype}).")
        if not np.isfinite(obs[key].to_numpy(dtype=float)).all():
            raise ValueError(f"Continuous covariate {key!r} of {table} has non-finite values.")
    if spec.dataset_key is not None and spec.library_key is not None:
        check_library_nesting(obs, spec.library_key, spec.dataset_key, where=table)
