"""Minibatch loaders of the fast data path: device-resident CSR, streamed host CSR, backed .h5ad blocks.

Every loader yields the dicts scvi-tools' AnnDataLoader yields (registry key -> tensor, counts as dense
float32, other keys in scvi-tools' default dtype), with no AnnData, pandas or per-cell Python objects per
minibatch. The epoch order of the resident and streamed loaders draws from torch's global generator in
exactly the sequence a ``DataLoader(BatchSampler(RandomSampler))`` does (one base-seed draw, one sampler
seed, ``randperm`` of a private generator), so with a fixed seed they visit the same minibatches as
scvi-tools' loader and leave the global generator in the same state for the model's own noise.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from rvi.data._csr import TorchCSR, as_csr, cpu_single_thread

_STOP = object()


def _scvi_compatible_order(n: int, shuffle: bool) -> torch.Tensor:
    """Positions 0..n-1 in the order scvi-tools' (single-process) training DataLoader visits them."""
    torch.empty((), dtype=torch.int64).random_()  # DataLoader iterator base seed
    if not shuffle:
        return torch.arange(n)
    seed = int(torch.empty((), dtype=torch.int64).random_().item())  # RandomSampler's own seed
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.randperm(n, generator=generator)


def _n_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


class _Loader:
    """Shared epoch logic: split the visiting order into minibatches of ``batch_size`` positions."""

    def __init__(self, indices: np.ndarray, batch_size: int, shuffle: bool, drop_last: bool):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        return _n_batches(len(self.indices), self.batch_size, self.drop_last)

    def _epoch_rows(self) -> list[torch.Tensor]:
        order = _scvi_compatible_order(len(self.indices), self.shuffle)
        rows = torch.from_numpy(self.indices)[order]
        batches = list(torch.split(rows, self.batch_size))
        if self.drop_last and batches and batches[-1].shape[0] < self.batch_size:
            batches = batches[:-1]
        return batches


class ResidentLoader(_Loader):
    """Minibatches gathered from matrices already on ``device`` (one CSR per modality, dense covariates)."""

    def __init__(
        self,
        matrices: dict[str, TorchCSR],
        dense: dict[str, torch.Tensor],
        indices: np.ndarray,
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
    ):
        super().__init__(indices, batch_size, shuffle, drop_last)
        self.matrices, self.dense, self.device = matrices, dense, torch.device(device)

    def batch(self, rows: torch.Tensor, totals: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
        rows = rows.to(self.device, non_blocking=True)
        totals = totals or {}
        out = {key: m.dense_rows(rows, totals.get(key)) for key, m in self.matrices.items()}
        with cpu_single_thread(self.device):
            out.update({key: t.index_select(0, rows) for key, t in self.dense.items()})
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if not len(self):
            return
        all_rows = torch.cat(self._epoch_rows()).to(self.device)
        # One host synchronisation per epoch for the minibatch sizes in entries, none per minibatch.
        totals = {key: m.batch_totals(all_rows, self.batch_size) for key, m in self.matrices.items()}
        for b, start in enumerate(range(0, len(self) * self.batch_size, self.batch_size)):
            rows = all_rows[start : start + self.batch_size]
            yield self.batch(rows, {key: t[b] for key, t in totals.items()})


def compact_rows(csr: sp.csr_matrix, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CSR pieces (indptr, indices, data) of ``csr[rows]`` as CPU tensors (scipy's C row gather: one
    thread, no OpenMP region, so it runs beside the training thread without contending for it)."""
    part = csr[rows.numpy()]
    return (
        torch.from_numpy(part.indptr.astype(np.int64, copy=False)),
        torch.from_numpy(part.indices.astype(np.int32, copy=False)),
        torch.from_numpy(part.data.astype(np.float32, copy=False)),
    )


class _HostBatches:
    """A background thread that prepares host minibatches (compact CSR pieces, pinned on CUDA) ahead of use."""

    def __init__(self, make_batches, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make_batches,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, make_batches):
        try:
            for item in make_batches():
                if not self._put(item):
                    return
        except BaseException as err:  # handed to the consumer, which re-raises it
            self._put(err)
            return
        self._put(_STOP)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)


class StreamedLoader(_Loader):
    """Minibatches from a host CSR (scipy, in host memory): a thread slices the next ``prefetch_depth``
    minibatches on the host (pinned memory on CUDA), the copy to the device runs on a side CUDA stream one
    minibatch ahead, and the dense rows are built on the device. On the CPU the same code runs without
    pinning or streams.

    ``block_source`` (a :class:`BackedCSRSource`) replaces the in-memory host CSR by contiguous reads of a
    backed .h5ad in shuffled blocks.
    """

    def __init__(
        self,
        host_matrices: dict[str, sp.csr_matrix],
        dense: dict[str, torch.Tensor],
        indices: np.ndarray,
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        prefetch_depth: int = 2,
        block_source=None,
    ):
        super().__init__(indices, batch_size, shuffle, drop_last)
        self.host, self.dense, self.device = host_matrices, dense, torch.device(device)
        self.prefetch_depth = prefetch_depth
        self.block_source = block_source
        self.pin = self.device.type == "cuda"

    def _to_device(self, item) -> dict[str, torch.Tensor]:
        rows, pieces = item
        rows = rows.to(self.device, non_blocking=True)
        out = {}
        for key, (indptr, indices, data) in pieces.items():
            n_cols = self.block_source.n_cols if self.block_source is not None else self.host[key].shape[1]
            ip, ix, dv = (t.to(self.device, non_blocking=True) for t in (indptr, indices, data))
            local = torch.arange(rows.shape[0], device=self.device)
            total = int(indptr[-1])  # known on the host: no device synchronisation
            out[key] = TorchCSR(ip, ix, dv, (rows.shape[0], n_cols)).dense_rows(local, total)
        with cpu_single_thread(self.device):
            out.update({key: t.index_select(0, rows) for key, t in self.dense.items()})
        return out

    def _host_pieces(self, epoch: list[torch.Tensor] | None, seed: int):
        if self.block_source is not None:
            source = self.block_source.epoch(self.indices, self.batch_size, self.shuffle, self.drop_last, seed)
        else:
            source = ((rows, {k: compact_rows(m, rows) for k, m in self.host.items()}) for rows in epoch)
        for rows, pieces in source:
            if self.pin:
                pieces = {k: tuple(t.pin_memory() for t in p) for k, p in pieces.items()}
                rows = rows.pin_memory()
            yield rows, pieces

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # The epoch order is drawn here, in the consumer, so the global generator advances exactly as with
        # scvi-tools' loader before the first minibatch is used (the block source draws its own seed here too).
        epoch, seed = (self._epoch_rows(), 0) if self.block_source is None else (None, self._block_seed())
        producer = _HostBatches(lambda: self._host_pieces(epoch, seed), self.prefetch_depth)
        try:
            if self.device.type != "cuda":
                for item in producer:
                    yield self._to_device(item)
                return
            stream = torch.cuda.Stream(device=self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))  # covariates copied on the default stream
            ahead = None
            for item in producer:
                with torch.cuda.stream(stream):
                    ready = self._to_device(item)
                if ahead is not None:
                    yield self._wait(ahead, stream)
                ahead = ready
            if ahead is not None:
                yield self._wait(ahead, stream)
        finally:
            producer.close()

    def _block_seed(self) -> int:
        torch.empty((), dtype=torch.int64).random_()  # DataLoader iterator base seed, as scvi-tools draws it
        return int(torch.empty((), dtype=torch.int64).random_().item()) if self.shuffle else 0

    @staticmethod
    def _wait(batch: dict[str, torch.Tensor], stream) -> dict[str, torch.Tensor]:
        current = torch.cuda.current_stream(stream.device)
        current.wait_stream(stream)
        for t in batch.values():
            t.record_stream(current)
        return batch


class BackedCSRSource:
    """Counts of a backed .h5ad (``X`` or ``layers/<key>``, CSR) read in contiguous shuffled blocks.

    Per epoch the sorted split rows are cut into blocks of ``block_size`` consecutive rows; the blocks are
    shuffled, grouped ``blocks_per_fetch`` at a time, each group read with one contiguous read per block and
    shuffled within itself (block shuffling, as scDataset does), then cut into minibatches. The file is
    re-opened every epoch and its shape checked on every read: a file whose shape changed raises.
    """

    def __init__(self, path: str, key: str, registry_key: str, block_size: int = 256, blocks_per_fetch: int = 16):
        import h5py

        self.path, self.key, self.registry_key = str(path), key, registry_key
        self.block_size, self.blocks_per_fetch = int(block_size), int(blocks_per_fetch)
        with h5py.File(self.path, "r") as fh:
            self.shape = self._check(fh)
        self.n_cols = self.shape[1]

    def _check(self, fh) -> tuple[int, int]:
        import h5py

        if self.key not in fh:
            raise KeyError(f"{self.path}: no {self.key!r} in the file.")
        node = fh[self.key]
        encoding = node.attrs.get("encoding-type", "dense array") if isinstance(node, h5py.Group) else "dense array"
        if isinstance(encoding, bytes):
            encoding = encoding.decode()
        if encoding != "csr_matrix":
            raise ValueError(
                f"{self.path}: {self.key!r} is stored as {encoding!r}; streaming a backed file needs CSR "
                "(rewrite it with adata.X = scipy.sparse.csr_matrix(adata.X); adata.write_h5ad(...)), "
                "or load it into memory."
            )
        shape = tuple(int(s) for s in node.attrs["shape"])
        if node["indptr"].shape[0] != shape[0] + 1:
            n_ptr = node["indptr"].shape[0]
            raise ValueError(f"{self.path}: {self.key!r} indptr has {n_ptr} entries for shape {shape}.")
        if getattr(self, "shape", None) is not None and shape != self.shape:
            raise RuntimeError(
                f"{self.path} changed during training: {self.key!r} had shape {self.shape} when training started, "
                f"now {shape}. Do not rewrite a file that is being streamed; restart training on the new file."
            )
        return shape

    def read_rows(self, fh, start: int, stop: int) -> sp.csr_matrix:
        node = fh[self.key]
        self._check(fh)
        ip = node["indptr"][start : stop + 1].astype(np.int64)
        lo, hi = int(ip[0]), int(ip[-1])
        data = node["data"][lo:hi].astype(np.float32, copy=False)
        idx = node["indices"][lo:hi].astype(np.int32, copy=False)
        return sp.csr_matrix((data, idx, ip - lo), shape=(stop - start, self.shape[1]))

    def read_all(self) -> sp.csr_matrix:
        import h5py

        with h5py.File(self.path, "r") as fh:
            step = 65536
            parts = [self.read_rows(fh, s, min(s + step, self.shape[0])) for s in range(0, self.shape[0], step)]
        return sp.vstack(parts, format="csr")

    def epoch(self, indices: np.ndarray, batch_size: int, shuffle: bool, drop_last: bool, seed: int = 0):
        import h5py

        rows_sorted = np.sort(np.asarray(indices, dtype=np.int64))
        blocks = [rows_sorted[i : i + self.block_size] for i in range(0, len(rows_sorted), self.block_size)]
        rng = np.random.default_rng(seed)
        if shuffle:
            blocks = [blocks[i] for i in rng.permutation(len(blocks))]
        pending_rows, pending = np.empty(0, dtype=np.int64), None
        with h5py.File(self.path, "r") as fh:
            for g in range(0, len(blocks), self.blocks_per_fetch):
                group = blocks[g : g + self.blocks_per_fetch]
                mats, wanted = [], []
                for block in group:
                    part = self.read_rows(fh, int(block[0]), int(block[-1]) + 1)
                    mats.append(part[block - block[0]])
                    wanted.append(block)
                mat = sp.vstack(mats, format="csr")
                rows = np.concatenate(wanted)
                if shuffle:
                    perm = rng.permutation(len(rows))
                    mat, rows = mat[perm], rows[perm]
                if pending is not None:
                    mat, rows = sp.vstack([pending, mat], format="csr"), np.concatenate([pending_rows, rows])
                n_full = len(rows) // batch_size
                for b in range(n_full):
                    sl = slice(b * batch_size, (b + 1) * batch_size)
                    yield self._piece(mat[sl], rows[sl])
                pending, pending_rows = mat[n_full * batch_size :], rows[n_full * batch_size :]
        if pending is not None and len(pending_rows) and not drop_last:
            yield self._piece(pending, pending_rows)

    def _piece(self, mat: sp.csr_matrix, rows: np.ndarray):
        t = TorchCSR.from_scipy(as_csr(mat, self.path))
        return torch.from_numpy(rows.copy()), {self.registry_key: (t.indptr, t.indices, t.data)}
