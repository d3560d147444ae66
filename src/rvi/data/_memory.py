"""Memory model of a training run: host and device bytes for the resident and streamed data paths.

The formula (documented in docs/data_path.md) counts, in bytes:

* data: per modality ``8 (N + 1) + 8 nnz`` (int64 indptr, int32 column index + float32 value per non-zero),
  plus ``4 N C`` for C covariate columns and ``8 N`` for the epoch permutation;
* model: ``16 P`` for P parameters (fp32 weights, gradients and Adam's two moments);
* activations: ``4 B (24 F + 12 H L)`` per modality for minibatch size B, F features, width H, L layers
  (autograd keeps about two dozen B x F tensors of the likelihood, decoder output, dispersion sample and
  input transform, and a dozen B x H per layer), plus ``4 B 16 Z`` for the latent;
* streamed prefetch: ``depth x B (8 F + 8 nnz_per_cell)`` for the dense target and compact CSR buffers.

Resident: device = data + model + activations; host = model (the host copy of the counts already
exists). Streamed: device = model + activations + prefetch; host = data (the pinned copy).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch

#: ``auto`` goes resident only while the estimate stays below this share of the free device memory.
RESIDENT_HEADROOM = 0.8


@dataclass
class MemoryEstimate:
    data_bytes: int
    model_bytes: int
    activation_bytes: int
    prefetch_bytes: int
    resident_device_bytes: int
    resident_host_bytes: int
    streamed_device_bytes: int
    streamed_host_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


def count_parameters(n_features: int, n_hidden: int, n_latent: int, n_layers: int, n_latent_total: int) -> int:
    """Parameters of one modality of the RegularizedVAE (encoder, library encoder, decoder, per-feature priors)."""
    enc = n_features * n_hidden + (n_layers - 1) * n_hidden * n_hidden + 2 * n_hidden * n_latent
    lib = n_features * 16 + 2 * 16
    dec = n_latent_total * n_hidden + (n_layers - 1) * n_hidden * n_hidden + n_hidden * n_features
    per_feature = 5 * n_features  # dispersion mu and sigma, background, scaling, output bias
    return enc + lib + dec + per_feature + 4 * n_hidden * n_layers


def estimate_memory(
    n_cells: int,
    modalities: list[dict],
    batch_size: int,
    n_covariate_columns: int = 0,
    prefetch_depth: int = 2,
    n_latent_shared: int = 0,
) -> MemoryEstimate:
    """Bytes of a run. ``modalities``: one dict per modality with ``n_features``, ``nnz``, ``n_hidden``,
    ``n_latent`` and ``n_layers`` (default 1); every encoder also outputs the ``n_latent_shared`` block."""
    if n_cells <= 0 or batch_size <= 0:
        raise ValueError(f"n_cells and batch_size must be positive, got {n_cells} and {batch_size}.")
    n_latent_total = sum(int(m["n_latent"]) for m in modalities) + n_latent_shared
    data = 4 * n_cells * n_covariate_columns + 8 * n_cells
    params = act = prefetch = 0
    for m in modalities:
        f, nnz, h, z = (int(m[k]) for k in ("n_features", "nnz", "n_hidden", "n_latent"))
        z += n_latent_shared
        layers = int(m.get("n_layers", 1))
        data += 8 * (n_cells + 1) + 8 * nnz
        params += count_parameters(f, h, z, layers, n_latent_total)
        act += 4 * batch_size * (24 * f + 12 * h * layers + 16 * z)
        nnz_per_cell = nnz / n_cells
        prefetch += int(prefetch_depth * batch_size * (8 * f + 8 * nnz_per_cell))
    model = 16 * params
    return MemoryEstimate(
        data_bytes=int(data),
        model_bytes=int(model),
        activation_bytes=int(act),
        prefetch_bytes=int(prefetch),
        resident_device_bytes=int(data + model + act),
        resident_host_bytes=int(model),
        streamed_device_bytes=int(model + act + prefetch),
        streamed_host_bytes=int(data),
    )


def free_device_bytes(device: torch.device) -> int:
    """Free memory of the device: ``cudaMemGetInfo`` on CUDA, MemAvailable of the host otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _gb(n: int) -> str:
    return f"{n / 1024**3:.2f} GB"


def choose_data_path(
    requested: str, estimate: MemoryEstimate, free_bytes: int, device: torch.device, headroom: float = RESIDENT_HEADROOM
) -> tuple[str, str]:
    """``(path, reason)`` for ``requested`` in auto / resident / streamed; a forced resident run that does not
    fit raises a MemoryError naming the bytes needed and free, and suggesting streamed."""
    need = estimate.resident_device_bytes
    fits = need <= headroom * free_bytes
    where = f"{_gb(need)} needed resident on {device}, {_gb(free_bytes)} free"
    if requested == "resident":
        if not fits:
            raise MemoryError(
                f"data_path='resident' does not fit: {need} bytes ({_gb(need)}) needed on {device} but only "
                f"{free_bytes} bytes ({_gb(free_bytes)}) free (at most {headroom:.0%} is used). "
                "Use data_path='streamed' (or 'auto')."
            )
        return "resident", f"forced; {where}"
    if requested == "streamed":
        return "streamed", f"forced; {where}"
    if requested != "auto":
        raise ValueError(f"choose_data_path: requested must be auto, resident or streamed, got {requested!r}.")
    if fits:
        return "resident", f"auto: {where} (fits within {headroom:.0%})"
    return "streamed", f"auto: {where} (over {headroom:.0%} of free memory)"
