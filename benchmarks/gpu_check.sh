#!/usr/bin/env bash
# The issue's GPU figures in one go (about 5 minutes on one H100/H200; installs nothing):
#  1. 60,000 x 20,000 (~1,350 nnz/cell), n_hidden 1024, n_latent 256, batch 1024, 3 epochs (1 warm-up):
#     rvi resident / streamed / scvi-tools loader, SCVI default and load_sparse_tensor=True, plus the
#     bone-marrow multimodal shape (35k cells, 13k genes ~1,200 nnz + 116k peaks ~4,400 nnz) rvi vs MULTIVI;
#     prints cells/s, ratios, peak GPU memory, peak RSS and the 416k-cell x 100-epoch extrapolation.
#  2. 1,000,000 x 20,000 (~1,350 nnz/cell) one epoch of rvi resident, peak GPU memory.
# Usage: PYTHONPATH=src bash benchmarks/gpu_check.sh [python]   (JSON under benchmarks/out/)
set -euo pipefail
PY=${1:-python}
cd "$(dirname "$0")/.."
mkdir -p benchmarks/out
"$PY" benchmarks/train_throughput.py --preset gpu --out benchmarks/out/gpu_throughput.json --timeout 240
"$PY" benchmarks/train_throughput.py --accelerator gpu --cells 1000000 --genes 20000 --nnz-per-cell 1350 \
  --tile 50000 --epochs 1 --variants rvi_resident --timeout 300 --out benchmarks/out/gpu_1m_cells.json
