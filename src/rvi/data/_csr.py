"""CSR matrices as torch tensors and the vectorised row gather that builds dense minibatches."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch


def as_csr(matrix, name: str) -> sp.csr_matrix:
    """A canonical (sorted, duplicate-free) scipy CSR of ``matrix``; dense arrays are converted."""
    if sp.issparse(matrix):
        out = matrix.tocsr()
    elif isinstance(matrix, np.ndarray):
        out = sp.csr_matrix(matrix)
    else:
        raise TypeError(f"{name}: expected a scipy sparse matrix or numpy array, got {type(matrix).__name__}.")
    if not out.has_canonical_format:
        out = out.copy()
        out.sum_duplicates()
    return out


def gather_dense(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    data: torch.Tensor,
    rows: torch.Tensor,
    n_cols: int,
    total: int | None = None,
) -> torch.Tensor:
    """Dense ``(len(rows), n_cols)`` float32 rows of a CSR matrix, built with index arithmetic only.

    For each requested row r the entries ``indptr[r]:indptr[r+1]`` are located by a repeat_interleave of
    the row lengths; the values are scattered into a zero matrix through one flat ``index_put_``. All
    tensors stay on their device; the only host synchronisation is the total number of entries, which
    callers that know it (per-epoch totals, a host-side indptr) pass as ``total`` to avoid it.
    """
    rows = rows.long()
    starts = indptr.index_select(0, rows)
    counts = indptr.index_select(0, rows + 1) - starts
    n_rows = rows.shape[0]
    out = torch.zeros(n_rows * n_cols, dtype=data.dtype, device=data.device)
    total = int(counts.sum()) if total is None else int(total)
    if total == 0:
        return out.view(n_rows, n_cols)
    row_of = torch.repeat_interleave(torch.arange(n_rows, device=data.device), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts  # position of each row's first entry in the output stream
    pos = torch.arange(total, device=data.device) + (starts - first).index_select(0, row_of)
    cols = indices.index_select(0, pos).long()
    out.index_put_((row_of * n_cols + cols,), data.index_select(0, pos))
    return out.view(n_rows, n_cols)


@contextmanager
def cpu_single_thread(device: torch.device):
    """Run small index kernels on one thread on the CPU: on a loaded machine, an OpenMP region over a few
    thousand entries waits for every worker thread to be scheduled (measured 0.4 ms on one thread vs 50 ms
    on two at load 11 on 2 cores); the matmuls outside keep all threads."""
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass
class TorchCSR:
    """A CSR matrix held as three torch tensors (int64 indptr, int32 column indices, float32 values)."""

    indptr: torch.Tensor
    indices: torch.Tensor
    data: torch.Tensor
    shape: tuple[int, int]

    @classmethod
    def from_scipy(cls, matrix: sp.csr_matrix, device="cpu", pin: bool = False) -> TorchCSR:
        tensors = [
            torch.from_numpy(np.ascontiguousarray(matrix.indptr, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(matrix.indices, dtype=np.int32)),
            torch.from_numpy(np.ascontiguousarray(matrix.data, dtype=np.float32)),
        ]
        if pin:
            tensors = [t.pin_memory() for t in tensors]
        else:
            tensors = [t.to(device) for t in tensors]
        return cls(*tensors, shape=(int(matrix.shape[0]), int(matrix.shape[1])))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.indptr, self.indices, self.data))

    def dense_rows(self, rows: torch.Tensor, total: int | None = None) -> torch.Tensor:
        with cpu_single_thread(self.data.device):
            return gather_dense(self.indptr, self.indices, self.data, rows, self.shape[1], total)

    def batch_totals(self, rows: torch.Tensor, batch_size: int) -> list[int]:
        """Non-zeros of each consecutive minibatch of ``rows``, with one host synchronisation."""
        with cpu_single_thread(self.data.device):
            lengths = self.indptr.index_select(0, rows + 1) - self.indptr.index_select(0, rows)
            ends = torch.cumsum(lengths, 0)[batch_size - 1 :: batch_size]
            if rows.shape[0] % batch_size:
                ends = torch.cat([ends, lengths.sum().reshape(1)])
            return torch.diff(ends, prepend=ends.new_zeros(1)).tolist()
