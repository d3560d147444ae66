"""Fast data path for training: device-resident CSR minibatches, streamed host / backed-file minibatches,
and the memory model that chooses between them (see docs/data_path.md)."""

from rvi.data._csr import TorchCSR, as_csr, gather_dense
from rvi.data._loaders import BackedCSRSource, ResidentLoader, StreamedLoader
from rvi.data._memory import MemoryEstimate, choose_data_path, estimate_memory, free_device_bytes
from rvi.data._splitter import DATA_PATHS, RVIDataSplitter, rank_shard

__all__ = [
    "DATA_PATHS",
    "BackedCSRSource",
    "MemoryEstimate",
    "RVIDataSplitter",
    "ResidentLoader",
    "StreamedLoader",
    "TorchCSR",
    "as_csr",
    "choose_data_path",
    "estimate_memory",
    "free_device_bytes",
    "gather_dense",
    "rank_shard",
]
