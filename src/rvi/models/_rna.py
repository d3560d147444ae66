"""AmbientRegularizedSCVI: the one-modality (RNA) case of the regularized VAE, on AnnData."""

from __future__ import annotations

import pandas as pd
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalJointObsField, LayerField, NumericalJointObsField

from rvi.models._base import RVIModelBase, check_bool, covariate_spec_from_args
from rvi.models._covariates import validate_obs
from rvi.models._stats import validate_counts
from rvi.module.vae import CAT_KEY, CONT_KEY


class AmbientRegularizedSCVI(RVIModelBase):
    """scVI with ambient RNA correction, feature scaling, a hierarchical dispersion prior, a batch-free
    decoder and a learned library size.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_hidden, n_latent, n_layers, dropout_rate
        Width, latent size, depth and input dropout of the encoder / decoder.
    dispersion_init
        ``"prior"`` (theta at the prior equilibrium, 9) or ``"data"`` (law-of-total-variance estimate).
    ambient_init
        ``"data"`` (default: 0.2 x per-category mean normalised expression) or ``"prior"`` (exp(beta) at
        the prior mean 0.01). From the prior mean the background is ~1000x below typical rates, its
        gradient (proportional to exp(beta)) is tiny, and in runs of a few hundred epochs it never leaves
        the prior; the data start is on the right scale and keeps its library specificity.
    centering_sensitivity
        Library centering sensitivity; c = log(value) (0 by default).
    additive_background, feature_scaling
        Switch the ambient term and the feature-scaling factor (both on; the background needs an
        ambient key, which ``library_key`` provides).
    **module_kwargs
        Passed to :class:`rvi.module.RegularizedVAE` (``regularise_background``, ``decoder_l2_weight``,
        ``library_prior_var_scale``, ``activation``, ``encoder_input``, the shrinkage options
        ``latent_prior``, ``z_l1_weight``, ``hidden_l1_weight``, ``decoder_l1_weight``, ...). The RNA model
        defaults to ``latent_prior="ard"`` (learned per-dimension prior precision; the width-quality curve
        in the README was measured with it); ``latent_prior="normal"`` gives the plain Normal(0, I).
    """

    def __init__(
        self,
        adata: AnnData,
        n_hidden: int = 512,
        n_latent: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion_init: str = "prior",
        ambient_init: str = "data",
        centering_sensitivity: float = 1.0,
        additive_background: bool = True,
        feature_scaling: bool = True,
        **module_kwargs,
    ):
        super().__init__(adata)
        check_bool("additive_background", additive_background)
        check_bool("feature_scaling", feature_scaling)
        modality = {
            "name": "rna",
            "registry_key": REGISTRY_KEYS.X_KEY,
            "n_features": self.summary_stats.n_vars,
            "n_hidden": n_hidden,
            "n_latent": n_latent,
            "n_layers": n_layers,
            "centering_sensitivity": centering_sensitivity,
            "additive_background": additive_background,
            "feature_scaling": feature_scaling,
        }
        module_kwargs.setdefault("latent_prior", "ard")
        self.module = self._build_module(
            [modality], dispersion_init, ambient_init, dropout_rate=dropout_rate, **module_kwargs
        )
        self._model_summary_string = (
            f"AmbientRegularizedSCVI: n_hidden={n_hidden}, n_latent={n_latent}, n_layers={n_layers}, "
            f"dropout_rate={dropout_rate}, ambient={bool(self.module.background)}, "
            f"feature_scaling={bool(self.module.scaling)}"
        )
        self.init_params_ = self._get_init_params(locals())

    def _feature_index(self, modality: str) -> pd.Index:
        return self.adata.var_names

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
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
        """Register an AnnData with one obs key per purpose (docs/model.md, "Covariates").

        ``library_key`` (or its alias ``batch_key``) fans out to the ambient, dispersion and
        library-size keys unless those are given; ``dataset_key`` is validated so each library
        belongs to one dataset. Raw integer counts are required in ``layer`` (or X).
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        if not isinstance(adata, AnnData):
            raise TypeError(f"setup_anndata expects an AnnData, got {type(adata).__name__}.")
        if encoder_covariate_keys is not False and not isinstance(encoder_covariate_keys, list | tuple | str):
            check_bool("encoder_covariate_keys", encoder_covariate_keys)
        spec = covariate_spec_from_args(setup_method_args["setup_args"])
        if layer is not None and layer not in adata.layers:
            raise KeyError(f"Layer {layer!r} not in adata.layers; available: {list(adata.layers)}.")
        validate_counts(adata.X if layer is None else adata.layers[layer], name=f"adata.{layer or 'X'}")
        validate_obs(adata.obs, spec, table="adata.obs")
        fields = [LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True)]
        if spec.categorical_columns:
            fields.append(CategoricalJointObsField(CAT_KEY, spec.categorical_columns))
        if spec.nn_continuous_covariate_keys:
            fields.append(NumericalJointObsField(CONT_KEY, spec.nn_continuous_covariate_keys))
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)
