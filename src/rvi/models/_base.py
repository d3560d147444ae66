"""Shared model machinery: registration of purpose-based covariates, module construction from data
statistics, training defaults and the user-facing getters. Both public models are thin on top."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from scvi.model._utils import get_max_epochs_heuristic
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from rvi.models._covariates import CovariateSpec, resolve_covariate_keys
from rvi.models._stats import dispersion_from_data, library_prior_stats, modality_stats
from rvi.module.vae import CAT_KEY, ModalityConfig, RegularizedVAE
from rvi.train import RVITrainingPlan, default_kl_warmup_epochs

logger = logging.getLogger(__name__)

COVARIATE_ARGS = (
    "library_key",
    "batch_key",
    "dataset_key",
    "technical_covariate_keys",
    "ambient_covariate_keys",
    "nn_conditioning_covariate_keys",
    "nn_continuous_covariate_keys",
    "feature_scaling_covariate_keys",
    "dispersion_key",
    "library_size_key",
    "encoder_covariate_keys",
)
BOOL_MODULE_ARGS = (
    "regularise_background",
    "regularise_feature_scaling",
    "learnable_modality_scale",
    "use_layer_norm",
    "use_batch_norm",
)


def check_bool(name: str, value) -> bool:
    """Booleans must be booleans: papermill and YAML-as-string configs pass 'False', which is truthy."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}.")


def covariate_spec_from_args(setup_args: dict) -> CovariateSpec:
    """Resolve the purpose-based keys from a setup method's arguments (also used on load)."""
    return resolve_covariate_keys(**{k: setup_args.get(k) for k in COVARIATE_ARGS if k in setup_args})


class RVIModelBase(UnsupervisedTrainingMixin, BaseModelClass):
    """Base of AmbientRegularizedSCVI and RegularizedMultimodalVI."""

    _module_cls = RegularizedVAE
    _training_plan_cls = RVITrainingPlan

    # ------------------------------------------------------------------ construction
    @property
    def covariate_spec(self) -> CovariateSpec:
        return covariate_spec_from_args(self.adata_manager.registry["setup_args"])

    def _categorical_codes(self) -> tuple[np.ndarray | None, list[int]]:
        if CAT_KEY not in self.adata_manager.data_registry:
            return None, []
        codes = self.adata_manager.get_from_registry(CAT_KEY)
        codes = codes.to_numpy() if isinstance(codes, pd.DataFrame) else np.asarray(codes)
        n_cats = list(self.adata_manager.get_state_registry(CAT_KEY).n_cats_per_key)
        return codes.astype(int), n_cats

    def _category_names(self, column: str) -> list[str]:
        state = self.adata_manager.get_state_registry(CAT_KEY)
        return [str(c) for c in state.mappings[column]]

    def _build_module(
        self,
        modalities: list[dict],
        dispersion_init: str = "prior",
        ambient_init: str = "prior",
        **module_kwargs,
    ) -> RegularizedVAE:
        """Compute data statistics (one chunked pass per modality) and build the module."""
        if dispersion_init not in ("prior", "data"):
            raise ValueError(f"dispersion_init must be 'prior' or 'data', got {dispersion_init!r}.")
        if ambient_init not in ("prior", "data"):
            raise ValueError(f"ambient_init must be 'prior' or 'data', got {ambient_init!r}.")
        for name in BOOL_MODULE_ARGS:
            if name in module_kwargs:
                check_bool(name, module_kwargs[name])
        spec = self.covariate_spec
        cols = spec.column_indices()
        codes, n_cats = self._categorical_codes()
        amb_codes = [codes[:, j] for j in cols["ambient"]] if codes is not None else []
        amb_n = [n_cats[j] for j in cols["ambient"]]
        lib_col = cols["library_size"]
        lib_groups = codes[:, lib_col] if lib_col is not None else None
        n_lib_groups = n_cats[lib_col] if lib_col is not None else 1

        configs = []
        for m in modalities:
            X = self.adata_manager.get_from_registry(m["registry_key"])
            stats = modality_stats(X, amb_codes, amb_n)
            lib_mean, lib_var = library_prior_stats(stats.total, lib_groups, n_lib_groups)
            scale = float(np.exp(lib_mean.mean()))  # exp(G): rates live on the scale of a centred library
            cfg = ModalityConfig(
                **m,
                log_lib_mean=lib_mean.tolist(),
                log_lib_var=lib_var.tolist(),
                mean_rate=(stats.mean_fraction * scale).tolist(),
                density=stats.density,
            )
            if dispersion_init == "data":
                cfg.init_theta = dispersion_from_data(stats.mean, stats.var, stats.total).tolist()
            if ambient_init == "data" and cfg.additive_background:
                cfg.ambient_init = [(0.2 * f * scale).tolist() for f in stats.category_fraction]
            configs.append(cfg)
        n_cont = len(spec.nn_continuous_covariate_keys)
        return self._module_cls(configs, n_cats, cols, n_continuous_cov=n_cont, **module_kwargs)

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int = 512,
        early_stopping: bool = False,
        early_stopping_min_delta_per_feature: float | None = None,
        plan_kwargs: dict | None = None,
        **kwargs,
    ):
        """Train with scvi-tools' machinery (``UnsupervisedTrainingMixin.train``).

        Adds: a KL warm-up that completes (see :func:`rvi.train.default_kl_warmup_epochs`) unless
        ``plan_kwargs`` sets one, and ``early_stopping_min_delta_per_feature``, which scales the
        early-stopping delta by the number of features (the loss is a sum over features).
        Accepts every argument of scvi-tools' train (accelerator, devices, strategy,
        datasplitter_kwargs, train_size, ...).
        """
        if max_epochs is None:
            max_epochs = get_max_epochs_heuristic(self.adata.n_obs)
        plan_kwargs = dict(plan_kwargs or {})
        if "n_epochs_kl_warmup" not in plan_kwargs and "n_steps_kl_warmup" not in plan_kwargs:
            plan_kwargs["n_epochs_kl_warmup"] = default_kl_warmup_epochs(max_epochs)
        if early_stopping_min_delta_per_feature is not None:
            n_features = sum(m.n_features for m in self.module.modalities)
            kwargs["early_stopping_min_delta"] = float(early_stopping_min_delta_per_feature) * n_features
        return super().train(
            max_epochs=max_epochs,
            batch_size=batch_size,
            early_stopping=early_stopping,
            plan_kwargs=plan_kwargs,
            **kwargs,
        )

    # ------------------------------------------------------------------ getters
    def _batches(self, adata=None, indices=None, batch_size: int | None = None):
        adata = self._validate_anndata(adata)
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size or 1024)
        for tensors in loader:
            yield {k: v.to(self.device) for k, v in tensors.items()}

    def _modality(self, modality: str | None) -> str:
        names = self.module.modality_names
        if modality is None:
            if len(names) > 1:
                raise ValueError(f"This model has several modalities {names}: pass modality=...")
            return names[0]
        if modality not in names:
            raise ValueError(f"Unknown modality {modality!r}; the model has {names}.")
        return modality

    def _feature_names(self, modality: str) -> pd.Index:
        return self._feature_index(modality)

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata=None,
        indices=None,
        give_mean: bool = True,
        batch_size: int | None = None,
        active_only: bool = False,
    ) -> np.ndarray:
        """Joint latent (posterior mean by default), slices in alphabetical order of modality names.

        ``active_only=True`` keeps the dimensions :meth:`get_active_latent_dims` reports as active
        (computed on the same cells).
        """
        self._check_if_trained(warn=False)
        self.module.eval()
        out = []
        for tensors in self._batches(adata, indices, batch_size):
            inf = self.module.inference(**self.module._get_inference_input(tensors), sample=not give_mean)
            out.append(inf["z"].cpu())
        z = torch.cat(out).numpy()
        if active_only:
            z = z[:, self.get_active_latent_dims(adata, indices, batch_size=batch_size)]
        return z

    @torch.inference_mode()
    def latent_variance_ratio(self, adata=None, indices=None, batch_size: int | None = None) -> np.ndarray:
        """Per joint latent dimension: mean over cells of posterior variance / prior variance.

        The prior variance is 1/alpha_k under ARD and 1 otherwise (horseshoe: of the non-centred u).
        A dimension the decoder does not use collapses to its prior (ratio ~ 1); a used one has a
        ratio well below 1.
        """
        self._check_if_trained(warn=False)
        self.module.eval()
        sums, n = None, 0
        for tensors in self._batches(adata, indices, batch_size):
            inf = self.module.inference(**self.module._get_inference_input(tensors), sample=False)
            parts = []
            for name in self.module.modality_names:
                qv = inf["qz_v"][name]
                if self.module.latent_prior_kind == "ard":
                    qv = qv * self.module.latent_prior[name].precision()
                parts.append(qv)
            qv = torch.cat(parts, dim=-1)
            sums = qv.sum(0) if sums is None else sums + qv.sum(0)
            n += qv.shape[0]
        return (sums / n).cpu().numpy()

    def get_active_latent_dims(
        self,
        adata=None,
        indices=None,
        method: str = "variance",
        threshold: float | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Indices of the active joint latent dimensions.

        ``method="variance"`` (any latent prior): active where the mean posterior variance is below
        ``threshold`` (default 0.5) times the prior variance, see :meth:`latent_variance_ratio`.
        ``method="precision"`` (``latent_prior="ard"`` only): active where the learned prior precision
        alpha_k is below ``threshold`` (default 10, i.e. a prior sd above ~0.3).
        """
        if method == "variance":
            ratio = self.latent_variance_ratio(adata, indices, batch_size=batch_size)
            return np.flatnonzero(ratio < (0.5 if threshold is None else threshold))
        if method == "precision":
            if self.module.latent_prior_kind != "ard":
                raise ValueError(
                    f"method='precision' needs latent_prior='ard'; this model has {self.module.latent_prior_kind!r}."
                )
            alpha = torch.cat([self.module.latent_prior[m].precision() for m in self.module.modality_names])
            return np.flatnonzero(alpha.detach().cpu().numpy() < (10.0 if threshold is None else threshold))
        raise ValueError(f"method must be 'variance' or 'precision', got {method!r}.")

    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata=None,
        indices=None,
        modality: str | None = None,
        library_size: float | str = 1.0,
        batch_size: int | None = None,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Decoder rho (library-normalised, batch-free, without ambient or technical scaling).

        ``library_size="latent"`` returns the expected counts mu = l (rho + s) y instead; a number
        multiplies rho.
        """
        modality = self._modality(modality)
        self.module.eval()
        adata = self._validate_anndata(adata)
        out = []
        for tensors in self._batches(adata, indices, batch_size):
            inf = self.module.inference(**self.module._get_inference_input(tensors), sample=False)
            gen = self.module.generative(**self.module._get_generative_input(tensors, inf), sample_theta=False)
            if library_size == "latent":
                out.append(gen["mu"][modality].cpu())
            else:
                out.append(gen["rho"][modality].cpu() * float(library_size))
        values = torch.cat(out).numpy()
        if return_numpy:
            return values
        obs_names = adata.obs_names if indices is None else adata.obs_names[indices]
        return pd.DataFrame(values, index=obs_names, columns=self._feature_index(modality))

    def _per_key_tables(self, tables: list[torch.Tensor], keys: list[str], modality: str):
        frames = {}
        for key, table in zip(keys, tables):
            index = self._category_names(key) if key != "all" else ["all"]
            frames[key] = pd.DataFrame(
                table.detach().cpu().numpy(), index=pd.Index(index, name=key), columns=self._feature_index(modality)
            )
        return frames[keys[0]] if len(frames) == 1 else frames

    def get_ambient_profile(self, modality: str | None = None):
        """exp(beta) per ambient category (categories x features); a dict per key with several keys."""
        modality = self._modality(modality)
        if modality not in self.module.background:
            raise ValueError(
                f"Modality {modality!r} has no additive background (no ambient_covariate_keys / library_key, "
                "or additive background switched off)."
            )
        return self._per_key_tables(
            self.module.background[modality].profiles(), self.covariate_spec.ambient_covariate_keys, modality
        )

    def get_feature_scaling(self, modality: str | None = None):
        """softplus(gamma)/0.7 per scaling category (categories x features); 'all' for the (1, F) fallback."""
        modality = self._modality(modality)
        if modality not in self.module.scaling:
            raise ValueError(f"Feature scaling is switched off for modality {modality!r}.")
        scaling = self.module.scaling[modality]
        keys = self.covariate_spec.feature_scaling_covariate_keys if scaling.has_keys else ["all"]
        return self._per_key_tables(scaling.factors(), keys, modality)

    def get_dispersion(self, modality: str | None = None) -> pd.DataFrame:
        """Inverse dispersion theta = exp(px_r_mu) per dispersion group (groups x features)."""
        modality = self._modality(modality)
        disp = self.module.dispersion[modality]
        key = self.covariate_spec.dispersion_key
        index = self._category_names(key) if key is not None else ["all"]
        return pd.DataFrame(
            torch.exp(disp.px_r_mu).detach().cpu().numpy(),
            index=pd.Index(index, name=key or "group"),
            columns=self._feature_index(modality),
        )

    # ------------------------------------------------------------------ multimodal views
    def get_modality_latents(self, adata=None, indices=None, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """The joint latent split into its per-modality slices (alphabetical order of names)."""
        z = self.get_latent_representation(adata, indices, batch_size=batch_size)
        out, start = {}, 0
        for m in self.module.modalities:
            out[m.name] = z[:, start : start + m.n_latent]
            start += m.n_latent
        return out

    def get_modality_attribution(
        self, adata=None, indices=None, batch_size: int = 256, dims_per_pass: int = 8, features: dict | None = None
    ) -> pd.DataFrame:
        """Exact per-cell Jacobian attribution of every decoder to every latent block (forward-mode JVPs).

        See :func:`rvi.models._attribution.modality_attribution` for the columns; ``batch_size`` and
        ``dims_per_pass`` bound memory (batch_size x features x dims_per_pass floats per decoder);
        ``features={modality: [names]}`` restricts a decoder to some of its features.
        """
        from rvi.models._attribution import modality_attribution

        return modality_attribution(
            self, adata, indices, batch_size=batch_size, dims_per_pass=dims_per_pass, features=features
        )

    def plot_attribution_scatter(
        self, adata, basis: str = "X_umap", attribution: pd.DataFrame | None = None, columns=None, batch_size=256
    ):
        """Colour a 2-D embedding (``adata.obsm[basis]``) by the attribution scores; returns the figure."""
        from rvi.models._attribution import plot_attribution_scatter

        if attribution is None:
            attribution = self.get_modality_attribution(batch_size=batch_size)
        return plot_attribution_scatter(adata, attribution, basis=basis, columns=columns)
