"""RVIDataSplitter: scvi-tools' DataSplitter (same train / validation / test split) whose loaders are the
fast data path: resident CSR on the training device, or streamed from host memory / a backed .h5ad."""

from __future__ import annotations

import logging

import numpy as np
import torch
from scvi.data._utils import registry_key_to_default_dtype
from scvi.dataloaders import DataSplitter

from rvi.data._csr import TorchCSR, as_csr
from rvi.data._loaders import BackedCSRSource, ResidentLoader, StreamedLoader
from rvi.data._memory import MemoryEstimate, choose_data_path, estimate_memory, free_device_bytes

logger = logging.getLogger(__name__)

DATA_PATHS = ("auto", "resident", "streamed", "scvi")


def rank_shard(indices: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s share of ``indices`` (every world-th one), padded by wrapping around as torch's
    DistributedSampler does, so that every rank has the same number of cells and so of minibatches (a rank
    with one minibatch more would wait for the others in DDP's gradient all-reduce)."""
    indices = np.asarray(indices, dtype=np.int64)
    if world <= 1 or len(indices) == 0:
        return indices
    per_rank = -(-len(indices) // world)
    padded = np.resize(indices, per_rank * world)  # np.resize repeats from the start
    return padded[rank::world]


def _is_matrix(values) -> bool:
    import scipy.sparse as sp

    name = type(values).__name__  # anndata's backed sparse datasets (_CSRDataset, _CSCDataset, ...)
    return sp.issparse(values) or name.lstrip("_") in ("CSRDataset", "CSCDataset", "SparseDataset")


def _dense_tensor(values, dtype) -> torch.Tensor:
    arr = values.to_numpy() if hasattr(values, "to_numpy") else np.asarray(values)
    return torch.from_numpy(np.ascontiguousarray(arr.astype(dtype, copy=False)))


class RVIDataSplitter(DataSplitter):
    """DataSplitter with ``data_path`` in auto / resident / streamed / scvi (scvi-tools' AnnDataLoader).

    The split (train_size, validation_size, shuffle_set_split with ``scvi.settings.seed``, external_indexing)
    is scvi-tools' own; only the loaders differ. The choice is made in ``setup`` once the trainer's device is
    known and recorded in ``data_path_used`` / ``data_path_reason``. Under DDP (scvi-tools' distributed
    sampler requested) each rank takes its shard of every split (:func:`rank_shard`) and, resident, holds
    only the shard's cells on its device.
    """

    def __init__(
        self,
        adata_manager,
        *args,
        data_path: str = "auto",
        module=None,
        prefetch_depth: int = 2,
        block_size: int = 256,
        **kwargs,
    ):
        if data_path not in DATA_PATHS:
            raise ValueError(f"data_path must be one of {list(DATA_PATHS)}, got {data_path!r}.")
        super().__init__(adata_manager, *args, **kwargs)
        self.data_path = data_path
        self._module = module
        self.prefetch_depth = int(prefetch_depth)
        self.block_size = int(block_size)
        self.data_path_used: str | None = None
        self.data_path_reason: str | None = None
        self.memory_estimate: MemoryEstimate | None = None
        self._built = None
        self._split: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ choice
    @property
    def batch_size(self) -> int:
        from scvi import settings

        return int(self.data_loader_kwargs.get("batch_size") or settings.batch_size)

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.strategy.root_device
        return torch.device("cpu")

    def _registry(self) -> tuple[dict, dict]:
        manager = self.adata_manager
        matrices, dense = {}, {}
        for key in manager.data_registry:
            values = manager.get_from_registry(key)
            if _is_matrix(values):
                matrices[key] = values
            elif isinstance(values, str):
                continue  # minified-data marker, not loaded by scvi-tools either
            else:
                dense[key] = values
        return matrices, dense

    def _backed_sources(self, matrices: dict) -> dict[str, BackedCSRSource]:
        adata = self.adata_manager.adata
        if not getattr(adata, "isbacked", False):
            return {}
        sources = {}
        for key in matrices:
            field = self.adata_manager.data_registry[key]
            where = "X" if field.attr_name == "X" or field.attr_key is None else f"{field.attr_name}/{field.attr_key}"
            sources[key] = BackedCSRSource(adata.filename, where, key, block_size=self.block_size)
        return sources

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def estimate(self, matrices: dict, dense: dict, n_rows: int | None = None) -> MemoryEstimate:
        """The memory model for this split's data (``n_rows`` of its cells: a DDP rank's shard) and the
        registered module's architecture."""
        n_obs = self.adata_manager.adata.n_obs
        share = 1.0 if n_rows is None else n_rows / max(n_obs, 1)
        module = getattr(self, "_module", None)
        configs = {m.registry_key: m for m in module.modalities} if module is not None else {}
        mods = []
        for key, values in matrices.items():
            cfg = configs.get(key)
            nnz = int(values.nnz) if hasattr(values, "nnz") else int(np.prod(values.shape))
            nnz = int(round(nnz * share))
            mods.append(
                {
                    "n_features": int(values.shape[1]),
                    "nnz": nnz,
                    "n_hidden": cfg.n_hidden if cfg else 512,
                    "n_latent": cfg.n_latent if cfg else 128,
                    "n_layers": cfg.n_layers if cfg else 1,
                }
            )
        n_cov = sum(int(np.prod(np.shape(v)[1:])) if np.ndim(v) > 1 else 1 for v in dense.values())
        shared = getattr(module, "n_latent_shared", 0)
        n = n_obs if n_rows is None else n_rows
        return estimate_memory(n, mods, self.batch_size, n_cov, self.prefetch_depth, n_latent_shared=shared)

    def setup(self, stage: str | None = None):
        super().setup(stage)
        # scvi-tools' TrainRunner makes this check only for a splitter named exactly "DataSplitter".
        stopper = getattr(getattr(self, "trainer", None), "early_stopping_callback", None)
        if stopper is not None and "valid" in stopper.monitor and self.n_val == 0:
            raise ValueError("Can't run Early Stopping with validation monitor with no validation set")
        if self._built is not None:
            return
        if self.data_path == "scvi":
            self.data_path_used, self.data_path_reason = "scvi", "requested"
            self._built = {}
            return
        device = self._device()
        matrices, dense = self._registry()
        backed = self._backed_sources(matrices)
        self._split = {"train": self.train_idx, "val": self.val_idx, "test": self.test_idx}
        shard_note = ""
        if self.data_loader_kwargs.get("distributed_sampler"):
            rank, world = self._rank_and_world()
            self._split = {k: rank_shard(v, rank, world) for k, v in self._split.items()}
            shard_note = f"; DDP rank {rank} of {world} holds its shard of {len(self._split['train'])} training cells"
        n_rows = sum(len(v) for v in self._split.values()) if shard_note else None
        self.memory_estimate = self.estimate(matrices, dense, n_rows)
        path, reason = choose_data_path(self.data_path, self.memory_estimate, free_device_bytes(device), device)
        self.data_path_used, self.data_path_reason = path, reason + shard_note
        dense_t = {k: _dense_tensor(v, registry_key_to_default_dtype(k)) for k, v in dense.items()}
        if path == "resident":
            rows = None
            if shard_note:
                # Only this rank's cells go to its device; the loaders then index the shard's own rows.
                rows = np.concatenate(list(self._split.values()))
                sizes = np.cumsum([0] + [len(v) for v in self._split.values()])
                self._split = {k: np.arange(sizes[i], sizes[i + 1]) for i, k in enumerate(self._split)}
                dense_t = {k: v[torch.from_numpy(rows)] for k, v in dense_t.items()}
            tensors = {}
            for key, values in matrices.items():
                host = backed[key].read_all() if key in backed else as_csr(values, f"registry key {key!r}")
                tensors[key] = TorchCSR.from_scipy(host if rows is None else host[rows], device=device)
            dense_t = {k: v.to(device) for k, v in dense_t.items()}
            self._built = {"matrices": tensors, "dense": dense_t, "device": device}
        else:
            host = {}
            if not backed:
                host = {k: as_csr(v, f"registry key {k!r}") for k, v in matrices.items()}
            if backed and len(backed) > 1:
                raise ValueError("Streaming a backed file supports one count matrix; load the MuData into memory.")
            dense_t = {k: v.to(device) for k, v in dense_t.items()}
            self._built = {
                "host": host,
                "dense": dense_t,
                "device": device,
                "block_source": next(iter(backed.values())) if backed else None,
            }
        logger.info("rvi data path: %s (%s)", path, reason)

    # ------------------------------------------------------------------ loaders
    def _loader(self, indices, shuffle: bool, drop_last: bool):
        b = self._built
        if "matrices" in b:
            return ResidentLoader(b["matrices"], b["dense"], indices, self.batch_size, shuffle, drop_last, b["device"])
        return StreamedLoader(
            b["host"],
            b["dense"],
            indices,
            self.batch_size,
            shuffle,
            drop_last,
            b["device"],
            prefetch_depth=self.prefetch_depth,
            block_source=b["block_source"],
        )

    def train_dataloader(self):
        if self.data_path_used == "scvi":
            return super().train_dataloader()
        return self._loader(self._split["train"], True, self.drop_last)

    def val_dataloader(self):
        if self.data_path_used == "scvi":
            return super().val_dataloader()
        if len(self._split["val"]) > 0:
            return self._loader(self._split["val"], False, False)

    def test_dataloader(self):
        if self.data_path_used == "scvi":
            return super().test_dataloader()
        if len(self._split["test"]) > 0:
            return self._loader(self._split["test"], False, False)
