"""Shared model machinery: registration of purpose-based covariates, module construction from data
statistics, training defaults and the user-facing getters. Both public models are thin on top."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from scvi.model._utils import get_max_epochs_heuristic, use_distributed_sampler
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from rvi.data import DATA_PATHS, RVIDataSplitter
from rvi.models._covariates import CovariateSpec, resolve_covariate_keys
from rvi.models._stats import dispersion_from_data, library_prior_stats, modality_stats
from rvi.module.vae import CAT_KEY, ModalityConfig, RegularizedVAE, resolve_encoder_inputs
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


def _early_stopping_callback(kwargs: dict):
    """scvi-tools' early-stopping callback from its train() arguments (popped), with scvi-tools' defaults."""
    from scvi.train._callbacks import LoudEarlyStopping

    return LoudEarlyStopping(
        monitor=kwargs.pop("early_stopping_monitor", "elbo_validation"),
        min_delta=kwargs.pop("early_stopping_min_delta", 0.0),
        patience=kwargs.pop("early_stopping_patience", 45),
        mode=kwargs.pop("early_stopping_mode", "min"),
        warmup_epochs=kwargs.pop("early_stopping_warmup_epochs", 0),
    )


def covariate_spec_from_args(setup_args: dict) -> CovariateSpec:
    """Resolve the purpose-based keys from a setup method's arguments (also used on load)."""
    return resolve_covariate_keys(**{k: setup_args.get(k) for k in COVARIATE_ARGS if k in setup_args})


def _feature_difference(current, saved, where: str, show: int = 10) -> None:
    current, saved = pd.Index(current).astype(str), pd.Index(saved).astype(str)
    missing, extra = saved.difference(current), current.difference(saved)
    if len(missing) or len(extra) or len(current) != len(saved):
        detail = []
        if len(missing):
            detail.append(f"{len(missing)} feature(s) of the model missing from the data: {list(missing[:show])}")
        if len(extra):
            detail.append(f"{len(extra)} feature(s) the model was not trained on: {list(extra[:show])}")
        if not detail:
            detail.append("duplicated feature names")
        raise ValueError(
            f"{where}: the data's features differ from the model's ({'; '.join(detail)}); subset the data to the "
            "model's features (e.g. adata[:, model_var_names]) before loading"
        )


def align_features(adata, saved_var_names, where: str = "model"):
    """``adata`` with its features in the order of ``saved_var_names`` (the model's training order).

    Returns ``adata`` itself when the order already matches, else a reordered copy (AnnData). Raises
    ValueError naming missing / extra features when the sets differ; for a MuData (per-modality names) the
    order must match per modality.
    """
    if isinstance(saved_var_names, dict):  # MuData, one array per modality
        for mod, names in saved_var_names.items():
            if mod not in adata.mod:
                raise ValueError(f"{where}: the data has no modality {mod!r} (has {list(adata.mod)})")
            current = adata.mod[mod].var_names
            _feature_difference(current, names, f"{where}, modality {mod!r}")
            if not np.array_equal(np.asarray(current).astype(str), np.asarray(names).astype(str)):
                raise ValueError(
                    f"{where}, modality {mod!r}: same features as the model in another order; reorder them to the "
                    "model's order (mdata.mod[m] = mdata.mod[m][:, names]) before loading"
                )
        return adata
    saved = np.asarray(saved_var_names).astype(str)
    current = np.asarray(adata.var_names).astype(str)
    if np.array_equal(current, saved):
        return adata
    _feature_difference(current, saved, where)
    logger.info("%s: reordering the data's %d features to the model's training order", where, len(saved))
    return adata[:, saved].copy()


class RVIModelBase(UnsupervisedTrainingMixin, BaseModelClass):
    """Base of AmbientRegularizedSCVI and RegularizedMultimodalVI."""

    _module_cls = RegularizedVAE
    _training_plan_cls = RVITrainingPlan
    _data_splitter_cls = RVIDataSplitter

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

        inputs = resolve_encoder_inputs(
            module_kwargs.get("encoder_input", "log_normalized"), [m["name"] for m in modalities]
        )
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
            if inputs[m["name"]] == "tfidf":
                cfg.idf = np.log1p(X.shape[0] / np.maximum(stats.detected, 1.0)).tolist()
            if dispersion_init == "data":
                cfg.init_theta = dispersion_from_data(stats.mean, stats.var, stats.total).tolist()
            if ambient_init == "data" and cfg.additive_background:
                cfg.ambient_init = [(0.2 * f * scale).tolist() for f in stats.category_fraction]
            configs.append(cfg)
        n_cont = len(spec.nn_continuous_covariate_keys)
        return self._module_cls(configs, n_cats, cols, n_continuous_cov=n_cont, **module_kwargs)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, dir_path, adata=None, *args, **kwargs):
        """scvi-tools' ``load``, with the features of ``adata`` matched to the saved model by name.

        The same features in another order are reordered to the training order (scvi-tools only warns,
        and the latent space silently changes); different feature sets raise a ValueError naming the
        missing and extra features.
        """
        if adata is not None:
            from scvi.model.base._save_load import _load_saved_files

            saved = _load_saved_files(str(dir_path), False, prefix=kwargs.get("prefix"), map_location="cpu")[1]
            adata = align_features(adata, saved, str(dir_path))
        return super().load(dir_path, adata, *args, **kwargs)

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int = 512,
        early_stopping: bool = False,
        early_stopping_min_delta_per_feature: float | None = None,
        plan_kwargs: dict | None = None,
        data_path: str = "auto",
        reduced_precision: bool = False,
        **kwargs,
    ):
        """Train with scvi-tools' machinery (``UnsupervisedTrainingMixin.train``).

        ``data_path`` picks the minibatch loader (:mod:`rvi.data`): ``"resident"`` keeps the CSR counts and
        covariates on the training device and builds dense minibatches there, ``"streamed"`` copies
        minibatches from host memory (or a backed .h5ad) ahead of use, ``"scvi"`` is scvi-tools'
        AnnDataLoader, ``"auto"`` (default) goes resident when the memory model fits the device's free
        memory and streamed otherwise. The choice and its reason are in ``model.data_path_``.

        ``reduced_precision=True`` runs the encoder and decoder networks under bf16 autocast (Lightning's
        ``precision="bf16-mixed"``; parameters, optimiser state, likelihood and priors stay fp32) and, on
        CUDA, lets fp32 matmuls use TF32 for the duration of this call. Off by default.

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
        # scvi-tools validates only with early stopping unless asked; users read history_ either way.
        train_size = kwargs.get("train_size")
        if train_size is None or train_size < 1.0:
            kwargs.setdefault("check_val_every_n_epoch", 1)
        if data_path not in DATA_PATHS:
            raise ValueError(f"data_path must be one of {list(DATA_PATHS)}, got {data_path!r}.")
        kwargs["datasplitter_kwargs"] = {**(kwargs.get("datasplitter_kwargs") or {}), "data_path": data_path}
        kwargs["datasplitter_kwargs"]["module"] = self.module
        reduced_precision = check_bool("reduced_precision", reduced_precision)
        if reduced_precision:
            if kwargs.get("precision") not in (None, "bf16-mixed"):
                raise ValueError(
                    f"reduced_precision=True sets precision='bf16-mixed'; got also precision={kwargs['precision']!r}."
                )
            kwargs["precision"] = "bf16-mixed"
        # The legacy switch on purpose: Lightning reads torch.get_float32_matmul_precision(), which raises once
        # the new per-backend API has been used. It concerns CUDA matmuls only; CPU matmuls keep full fp32.
        if early_stopping and use_distributed_sampler(kwargs.get("strategy")):
            # scvi-tools' Trainer switches early stopping off under DDP. Its ELBO metrics are torchmetrics
            # summed over ranks, so every rank sees the same validation value and takes the same decision
            # (Lightning's EarlyStopping also all-reduces the decision): add the callback here instead.
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), _early_stopping_callback(kwargs)]
            early_stopping = False
        cuda_matmul = torch.backends.cuda.matmul
        previous_tf32 = cuda_matmul.allow_tf32
        # Denormal floats (tiny gradients and Adam moments) make CPU arithmetic several times slower; flushing
        # them to zero changes values below 1e-38 only. Switched back off when training ends.
        flushing = torch.set_flush_denormal(True)
        try:
            if reduced_precision:
                cuda_matmul.allow_tf32 = True
            result = super().train(
                max_epochs=max_epochs,
                batch_size=batch_size,
                early_stopping=early_stopping,
                plan_kwargs=plan_kwargs,
                **kwargs,
            )
        finally:
            cuda_matmul.allow_tf32 = previous_tf32
            if flushing:
                torch.set_flush_denormal(False)
        self._complete_history()
        splitter = getattr(getattr(self, "trainer", None), "datamodule", None)
        if isinstance(splitter, RVIDataSplitter):
            self.data_path_ = {"data_path": splitter.data_path_used, "reason": splitter.data_path_reason}
            logger.info("trained with data_path=%s (%s)", splitter.data_path_used, splitter.data_path_reason)
        return result

    def _complete_history(self) -> None:
        """Every ``*_train`` key of ``history_`` gets its ``*_validation`` twin (NaN without a validation set)."""
        history = getattr(self, "history_", None)
        if not history:
            return
        for key in [k for k in history if k.endswith("_train")]:
            twin = key[: -len("_train")] + "_validation"
            if twin not in history:
                frame = history[key]
                history[twin] = pd.DataFrame(np.nan, index=frame.index, columns=[twin])

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

    def _slice_weights(self) -> dict[str, float]:
        """{modality: factor} applied to the joint representation; none for a single modality."""
        return {}

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
        weighted: bool = True,
    ) -> np.ndarray:
        """Joint latent (posterior mean by default), slices in alphabetical order of modality names.

        ``weighted=True`` multiplies each private slice by the model's ``joint_latent_weights`` (multimodal
        model; the RNA model has none), ``weighted=False`` gives z itself. ``active_only=True`` keeps the
        dimensions :meth:`get_active_latent_dims` reports as active (computed on the same cells).
        """
        self._check_if_trained(warn=False)
        self.module.eval()
        out = []
        for tensors in self._batches(adata, indices, batch_size):
            inf = self.module.inference(**self.module._get_inference_input(tensors), sample=not give_mean)
            out.append(inf["z"].cpu())
        z = torch.cat(out).numpy()
        if weighted:
            blocks = self.module.latent_blocks()
            for name, weight in self._slice_weights().items():
                if weight != 1.0:
                    z[:, blocks[name]] *= weight
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
            if "shared" in inf:  # the shared slice always has the Normal(0, I) prior
                parts.append(inf["shared"]["qz_v"])
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
            alpha = [self.module.latent_prior[m].precision().detach() for m in self.module.modality_names]
            alpha.append(torch.ones(self.module.n_latent_shared, device=alpha[0].device))  # shared: Normal(0, I)
            alpha = torch.cat(alpha)
            return np.flatnonzero(alpha.cpu().numpy() < (10.0 if threshold is None else threshold))
        raise ValueError(f"method must be 'variance' or 'precision', got {method!r}.")

    def _transformed_codes(self, cat: torch.Tensor, transform_batch) -> list[torch.Tensor]:
        """Copies of the categorical tensor with the nn-conditioning column(s) set to ``transform_batch``.

        ``transform_batch`` is a category of the (single) nn-conditioning key, a list of them (the
        decoded values are averaged, as in scvi-tools), or ``{key: category}`` for several keys.
        """
        keys = self.covariate_spec.nn_conditioning_covariate_keys
        if not keys:
            raise ValueError(
                "transform_batch needs nn_conditioning_covariate_keys: this model's decoder is batch-free, "
                "so its normalized expression is the same for every batch."
            )
        if isinstance(transform_batch, dict):
            unknown = sorted(set(transform_batch) - set(keys))
            if unknown:
                raise KeyError(f"transform_batch keys {unknown} are not nn-conditioning keys; those are {keys}.")
            choices = [transform_batch]
        else:
            if len(keys) > 1:
                raise ValueError(f"The decoder is conditioned on {keys}: pass transform_batch={{key: category}}.")
            values = transform_batch if isinstance(transform_batch, list | tuple) else [transform_batch]
            choices = [{keys[0]: v} for v in values]
        columns = self.covariate_spec.categorical_columns
        out = []
        for choice in choices:
            codes = cat.clone()
            for key, value in choice.items():
                names = self._category_names(key)
                if str(value) not in names:
                    raise KeyError(f"transform_batch: {value!r} is not a category of {key!r}; categories: {names}.")
                codes[:, columns.index(key)] = names.index(str(value))
            out.append(codes)
        return out

    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata=None,
        indices=None,
        modality: str | None = None,
        transform_batch=None,
        gene_list: list[str] | None = None,
        library_size: float | str = 1.0,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Decoded expression, with scvi-tools' signature and semantics.

        ``library_size`` a number: the decoder's rho (batch-free, without ambient background or technical
        feature scaling) as fractions of each cell's total, times ``library_size`` (each row sums to it;
        1 gives frequencies). ``library_size="latent"``: the expected counts mu = l (rho + s) y.
        ``n_samples`` > 1 decodes that many posterior draws of z (averaged unless ``return_mean=False``,
        which returns an array samples x cells x features); ``transform_batch`` decodes every cell as if
        it came from that nn-conditioning category (see :meth:`_transformed_codes`); ``gene_list``
        keeps those features, in that order.
        """
        modality = self._modality(modality)
        if library_size != "latent" and not (isinstance(library_size, int | float) and library_size > 0):
            raise ValueError(f"library_size must be a positive number or 'latent', got {library_size!r}.")
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        features = self._feature_index(modality)
        if gene_list is None:
            keep = None
        else:
            missing = [g for g in gene_list if g not in features]
            if missing:
                raise KeyError(f"gene_list: {len(missing)} features not in the model, e.g. {missing[:5]}.")
            keep = torch.as_tensor(features.get_indexer(gene_list))
        self.module.eval()
        adata = self._validate_anndata(adata)
        out = []
        for tensors in self._batches(adata, indices, batch_size):
            cat = tensors.get(CAT_KEY)
            variants = [cat] if transform_batch is None else self._transformed_codes(cat, transform_batch)
            draws = []
            for _ in range(n_samples):
                inf = self.module.inference(**self.module._get_inference_input(tensors), sample=n_samples > 1)
                gen_in = self.module._get_generative_input(tensors, inf)
                per_batch = []
                for codes in variants:
                    gen = self.module.generative(**{**gen_in, "cat": codes}, sample_theta=False)
                    if library_size == "latent":
                        values = gen["mu"][modality]
                    else:
                        rho = gen["rho"][modality]
                        values = rho / rho.sum(-1, keepdim=True).clamp(min=1e-12) * float(library_size)
                    per_batch.append(values if keep is None else values[:, keep.to(values.device)])
                draws.append(torch.stack(per_batch).mean(0).cpu())
            out.append(torch.stack(draws))
        values = torch.cat(out, dim=1).numpy()  # samples x cells x features
        if n_samples > 1 and not return_mean:
            return values
        values = values.mean(0)
        if return_numpy:
            return values
        obs_names = adata.obs_names if indices is None else adata.obs_names[indices]
        columns = features if gene_list is None else pd.Index(gene_list)
        return pd.DataFrame(values, index=obs_names, columns=columns)

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
        """The joint latent z split into its blocks (unweighted): per-modality slices (alphabetical order of
        names), then "shared" when the model has one (``n_latent_shared``)."""
        z = self.get_latent_representation(adata, indices, batch_size=batch_size, weighted=False)
        return {name: z[:, block] for name, block in self.module.latent_blocks().items()}

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
