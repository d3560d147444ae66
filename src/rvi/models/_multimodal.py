"""RegularizedMultimodalVI: the regularized VAE on MuData, any number of modalities."""

from __future__ import annotations

import numpy as np
import pandas as pd
from mudata import MuData
from scvi.data import AnnDataManager
from scvi.data.fields import MuDataCategoricalJointObsField, MuDataLayerField, MuDataNumericalJointObsField

from rvi.models._base import RVIModelBase, check_bool, covariate_spec_from_args
from rvi.models._covariates import validate_obs
from rvi.models._stats import validate_counts
from rvi.module.vae import CAT_KEY, CONT_KEY

PER_MODALITY_ARGS = ("n_hidden", "n_latent", "n_layers", "centering_sensitivity")


def registry_key(modality: str) -> str:
    return f"X_{modality}"


def _per_modality(name: str, value, modalities: list[str]) -> dict:
    """A scalar applies to every modality; a dict must name only known modalities (others get the default)."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(modalities))
        if unknown:
            raise ValueError(f"{name} names unknown modalities {unknown}; the model has {modalities}.")
        return value
    return {m: value for m in modalities}


def _modality_list(name: str, value, modalities: list[str]) -> list[str]:
    value = [value] if isinstance(value, str) else list(value or [])
    unknown = sorted(set(value) - set(modalities))
    if unknown:
        raise ValueError(f"{name} names unknown modalities {unknown}; the model has {modalities}.")
    return value


DEFAULT_JOINT_LATENT_WEIGHTS = {"atac": 0.5}


def resolve_joint_latent_weights(value, modalities: list[str]) -> dict[str, float]:
    """{modality: weight} for every modality; None gives DEFAULT_JOINT_LATENT_WEIGHTS (others 1)."""
    if value is None:
        value = {m: w for m, w in DEFAULT_JOINT_LATENT_WEIGHTS.items() if m in modalities}
    named = _per_modality("joint_latent_weights", value, modalities)
    weights = {m: 1.0 for m in modalities}
    for m, w in named.items():
        if isinstance(w, bool) or not isinstance(w, int | float) or not np.isfinite(w) or w <= 0:
            raise ValueError(f"joint_latent_weights[{m!r}] must be a positive number, got {w!r}.")
        weights[m] = float(w)
    return weights


def align_modalities(mdata: MuData, modalities: list[str] | None = None) -> MuData:
    """A new MuData whose modalities all hold the union of cells in one order; absent cells become all-zero
    rows (which the model masks out of that modality's terms). Global obs is carried over."""
    import anndata as ad
    import scipy.sparse as sp

    modalities = list(mdata.mod) if modalities is None else modalities
    names = pd.Index(mdata.obs_names)
    mods = {}
    for m in modalities:
        a = mdata.mod[m]
        pos = a.obs_names.get_indexer(names)
        present = pos >= 0
        X = sp.csr_matrix(a.X) if sp.issparse(a.X) else sp.csr_matrix(np.asarray(a.X))
        take = sp.csr_matrix(
            (np.ones(present.sum()), (np.flatnonzero(present), pos[present])), shape=(len(names), a.n_obs)
        )
        rows = take @ X
        layers = {k: take @ sp.csr_matrix(v) for k, v in a.layers.items()}
        mods[m] = ad.AnnData(rows, obs=pd.DataFrame(index=names), var=a.var.copy(), layers=layers)
    out = MuData(mods)
    out.obs = mdata.obs.loc[names].copy()
    return out


class RegularizedMultimodalVI(RVIModelBase):
    """Multimodal regularized VAE (RNA + ATAC and more) with exact modality attribution.

    One encoder and one learned-library encoder per modality; private latent slices concatenated in
    alphabetical order of modality names ([z_atac; z_rna]); every decoder sees the whole z plus the
    nn-conditioning covariates. Decoders are symmetric: additive background and feature scaling are
    switched per modality; dispersion prior and learned library are always on.

    Parameters
    ----------
    mdata
        MuData registered with :meth:`setup_mudata`.
    n_hidden, n_latent, n_layers, centering_sensitivity
        A scalar for every modality or a dict {modality: value}; unknown names are rejected.
    additive_background_modalities
        Modalities with the ambient background term (default ["rna"]).
    feature_scaling_modalities
        Modalities with the feature-scaling factor (default: every modality when
        ``feature_scaling_covariate_keys`` are registered, else ATAC alone). A modality left out
        keeps those covariates' per-feature effects (e.g. a dataset's gene scaling) unmodelled, so they
        can only be explained through the latent.
    learnable_modality_scale
        Learn softplus(r_m)/0.7 per modality with a Gamma prior centred at 1.
    joint_latent_weights
        Factor each private slice is multiplied by in :meth:`get_latent_representation` (the embedding that
        neighbours, UMAP, clustering and the metrics use); the model's z and the decoders are unaffected.
        A scalar applies to every modality, a dict {modality: weight} to those it names (others: 1). The
        default (None) halves the ATAC slice: on real shallow multiome its posterior means are mostly
        chromatin variation that neither cell type nor depth explains (3% of its variance is cell type on
        SNARE-seq cortex, vs 30% for the RNA slice), so at full weight it dilutes the RNA slice's types,
        while half weight keeps chromatin-only states apart (docs/model.md, "Joint latent weights").
    **module_kwargs
        Passed to :class:`rvi.module.RegularizedVAE`.
    """

    def __init__(
        self,
        mdata: MuData,
        n_hidden: int | dict = 512,
        n_latent: int | dict = 64,
        n_layers: int | dict = 1,
        dropout_rate: float = 0.1,
        centering_sensitivity: float | dict = 1.0,
        additive_background_modalities: list[str] | None = ("rna",),
        feature_scaling_modalities: list[str] | None = None,
        dispersion_init: str = "prior",
        ambient_init: str = "data",
        joint_latent_weights: float | dict | None = None,
        **module_kwargs,
    ):
        super().__init__(mdata)
        names = self.modality_names_registered
        self.joint_latent_weights = resolve_joint_latent_weights(joint_latent_weights, names)
        values = {
            "n_hidden": _per_modality("n_hidden", n_hidden, names),
            "n_latent": _per_modality("n_latent", n_latent, names),
            "n_layers": _per_modality("n_layers", n_layers, names),
            "centering_sensitivity": _per_modality("centering_sensitivity", centering_sensitivity, names),
        }
        defaults = {"n_hidden": 512, "n_latent": 64, "n_layers": 1, "centering_sensitivity": 1.0}
        background = _modality_list("additive_background_modalities", additive_background_modalities, names)
        if feature_scaling_modalities is None:
            # With scaling keys (e.g. the dataset) every modality gets their per-feature factors; without,
            # only ATAC keeps its (1, F) fallback (for RNA it would only duplicate the decoder's bias).
            keyed = bool(self.covariate_spec.feature_scaling_covariate_keys)
            feature_scaling_modalities = names if keyed else [n for n in names if n == "atac"]
        scaling = _modality_list("feature_scaling_modalities", feature_scaling_modalities, names)
        specs = []
        for m in names:
            spec = {
                "name": m,
                "registry_key": registry_key(m),
                "n_features": self.adata.mod[self._mod_key(m)].n_vars,
                "additive_background": m in background,
                "feature_scaling": m in scaling,
            }
            spec.update({k: values[k].get(m, defaults[k]) for k in PER_MODALITY_ARGS})
            specs.append(spec)
        self.module = self._build_module(
            specs, dispersion_init, ambient_init, dropout_rate=dropout_rate, **module_kwargs
        )
        sizes = ", ".join(f"{m.name}: {m.n_features} features, n_latent={m.n_latent}" for m in self.module.modalities)
        self._model_summary_string = f"RegularizedMultimodalVI ({sizes})"
        self.init_params_ = self._get_init_params(locals())

    @property
    def modality_names_registered(self) -> list[str]:
        return sorted(self.adata_manager.registry["setup_args"]["modalities"])

    def _mod_key(self, modality: str) -> str:
        return self.adata_manager.registry["setup_args"]["modalities"][modality]

    def _feature_index(self, modality: str) -> pd.Index:
        return self.adata.mod[self._mod_key(modality)].var_names

    def _slice_weights(self) -> dict[str, float]:
        return self.joint_latent_weights

    @classmethod
    def setup_anndata(cls, adata, *args, **kwargs):
        """Not applicable: this model is registered on MuData with :meth:`setup_mudata`."""
        raise TypeError(
            "RegularizedMultimodalVI is set up on MuData: use RegularizedMultimodalVI.setup_mudata(mdata, ...), "
            "or AmbientRegularizedSCVI for RNA alone."
        )

    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        modalities: dict[str, str] | list[str] | None = None,
        layer: str | dict[str, str | None] | None = None,
        library_key: str | None = None,
        batch_key: str | None = None,
        dataset_key: str | None = None,
        technical_covariate_keys: list[str] | None = None,
        ambient_covariate_keys: list[str] | None = None,
        nn_conditioning_covariate_keys: list[str] | None = None,
        nn_continuous_covariate_keys: list[str] | None = None,
        feature_scaling_covariate_keys: list[str] | None = None,
        dispersion_key: str | None = None,
        library_size_key: str | None = None,
        encoder_covariate_keys: list[str] | bool = False,
        **kwargs,
    ):
        """Register a MuData. ``modalities`` maps model modality names to ``mdata.mod`` keys (a list uses
        the same names; default: every modality). Covariates are read from the global ``mdata.obs``; where
        a modality's own obs has the same column it must agree. Every modality must hold the same cells in
        the same order as ``mdata.obs_names`` (use :func:`align_modalities` otherwise)."""
        if not isinstance(mdata, MuData):
            raise TypeError(f"setup_mudata expects a MuData, got {type(mdata).__name__}.")
        if modalities is None:
            modalities = {m: m for m in mdata.mod}
        elif isinstance(modalities, list | tuple):
            modalities = {m: m for m in modalities}
        modalities = dict(modalities)
        locals_copy = dict(locals())
        locals_copy["modalities"] = modalities
        setup_method_args = cls._get_setup_method_args(**locals_copy)
        missing = sorted(set(modalities.values()) - set(mdata.mod))
        if missing:
            raise KeyError(f"Modalities {missing} not in mdata.mod; available: {list(mdata.mod)}.")
        layers = layer if isinstance(layer, dict) else {m: layer for m in modalities}
        unknown = sorted(set(layers) - set(modalities))
        if unknown:
            raise ValueError(f"layer names unknown modalities {unknown}; registered: {sorted(modalities)}.")
        if encoder_covariate_keys is not False and not isinstance(encoder_covariate_keys, list | tuple | str):
            check_bool("encoder_covariate_keys", encoder_covariate_keys)
        spec = covariate_spec_from_args(setup_method_args["setup_args"])
        for name, mod_key in modalities.items():
            a = mdata.mod[mod_key]
            if a.n_vars == 0:
                raise ValueError(f"Modality {name!r} (mdata.mod[{mod_key!r}]) has zero features.")
            if a.n_obs != mdata.n_obs or not a.obs_names.equals(mdata.obs_names):
                same_set = a.n_obs == mdata.n_obs and set(a.obs_names) == set(mdata.obs_names)
                what = "the same cells in a different order" if same_set else "a different set of cells"
                raise ValueError(
                    f"Modality {name!r} holds {what} than mdata.obs_names ({a.n_obs} vs {mdata.n_obs} cells). "
                    "Align them with rvi.models.align_modalities(mdata) (absent cells become all-zero rows)."
                )
            lay = layers.get(name)
            if lay is not None and lay not in a.layers:
                raise KeyError(f"Layer {lay!r} not in mdata.mod[{mod_key!r}].layers; available: {list(a.layers)}.")
            validate_counts(a.X if lay is None else a.layers[lay], name=f"mdata.mod[{mod_key!r}].{lay or 'X'}")
        _check_obs_agreement(mdata, modalities, spec.categorical_columns + spec.nn_continuous_covariate_keys)
        validate_obs(mdata.obs, spec, table="mdata.obs")

        fields = [
            MuDataLayerField(
                registry_key(name), layers.get(name), mod_key=mod_key, is_count_data=True, mod_required=True
            )
            for name, mod_key in sorted(modalities.items())
        ]
        if spec.categorical_columns:
            fields.append(MuDataCategoricalJointObsField(CAT_KEY, spec.categorical_columns, mod_key=None))
        if spec.nn_continuous_covariate_keys:
            fields.append(MuDataNumericalJointObsField(CONT_KEY, spec.nn_continuous_covariate_keys, mod_key=None))
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(mdata, **kwargs)
        cls.register_manager(adata_manager)


def _check_obs_agreement(mdata: MuData, modalities: dict[str, str], columns: list[str]) -> None:
    """A covariate present both in mdata.obs and in a modality's obs must hold the same values."""
    for col in columns:
        if col not in mdata.obs.columns:
            prefixed = [f"{mod}:{col}" for mod in modalities.values() if f"{mod}:{col}" in mdata.obs.columns]
            hint = f" (found {prefixed}: copy it to mdata.obs[{col!r}])" if prefixed else ""
            raise KeyError(
                f"Covariate key {col!r} is not a column of mdata.obs{hint}; available: {list(mdata.obs.columns)}."
            )
        glob = mdata.obs[col].astype(str)
        for mod_key in modalities.values():
            obs = mdata.mod[mod_key].obs
            if col in obs.columns:
                local = obs[col].astype(str).reindex(mdata.obs_names)
                differ = (local != glob).to_numpy()
                if differ.any():
                    raise ValueError(
                        f"Covariate {col!r} differs between mdata.obs and mdata.mod[{mod_key!r}].obs for "
                        f"{int(differ.sum())} cells (e.g. {list(mdata.obs_names[differ][:3])})."
                    )
