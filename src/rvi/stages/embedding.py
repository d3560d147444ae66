"""What the model stages compute on a latent space: kNN graph, UMAP and Leiden, the kNN file format."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from rvi.io.atomic import atomic_path, save_figure, write_csv, write_parquet


def plot_umaps(coords: pd.DataFrame, obs: pd.DataFrame, keys: Sequence[str], path: str) -> None:
    from rvi.plots import umap_panels

    save_figure(umap_panels(coords, obs, keys), path)


def knn_umap_leiden(latent: np.ndarray, obs_names: pd.Index, embedding: Mapping, threads: int = 1):
    """kNN graph, UMAP and Leiden of a latent space; returns (conn, dist, umap frame, leiden frame)."""
    import anndata as ad
    import scanpy as sc

    from rvi.annotation import broad_leiden

    tmp = ad.AnnData(obs=pd.DataFrame(index=obs_names), obsm={"X_latent": np.asarray(latent, dtype=np.float32)})
    sc.pp.neighbors(tmp, use_rep="X_latent", n_neighbors=embedding["n_neighbors"], random_state=embedding["seed"])
    sc.tl.umap(tmp, min_dist=embedding["umap_min_dist"], random_state=embedding["seed"])
    conn, dist = tmp.obsp["connectivities"].tocsr(), tmp.obsp["distances"].tocsr()
    umap = pd.DataFrame(tmp.obsm["X_umap"], index=obs_names, columns=["UMAP1", "UMAP2"])
    leiden = pd.DataFrame(
        {
            "leiden": np.asarray(
                broad_leiden(conn, resolution=embedding["leiden_resolution"], random_state=embedding["seed"])
            )
        },
        index=obs_names,
    )
    return conn, dist, umap, leiden


def save_knn(path: str, obs_names: pd.Index, connectivities, distances, n_neighbors: int) -> None:
    """kNN graph as one .npz: CSR parts of connectivities and distances plus the cell names."""
    arrays = {"obs_names": np.asarray(obs_names, dtype=str), "n_neighbors": np.array(n_neighbors)}
    for name, m in (("connectivities", connectivities), ("distances", distances)):
        arrays |= {f"{name}_data": m.data, f"{name}_indices": m.indices, f"{name}_indptr": m.indptr}
        arrays[f"{name}_shape"] = np.array(m.shape)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def load_knn(path: str) -> tuple[pd.Index, object, object]:
    """Inverse of :func:`save_knn`: (obs_names, connectivities, distances)."""
    import scipy.sparse as sp

    z = np.load(path, allow_pickle=False)
    mats = [
        sp.csr_matrix((z[f"{n}_data"], z[f"{n}_indices"], z[f"{n}_indptr"]), shape=tuple(z[f"{n}_shape"]))
        for n in ("connectivities", "distances")
    ]
    return pd.Index(z["obs_names"].astype(str)), mats[0], mats[1]


def write_embedding_outputs(
    z: np.ndarray,
    adata,
    embedding: Mapping,
    latent: str,
    umap: str,
    leiden: str,
    knn: str,
    umap_png: str,
    color_keys: Sequence[str | None],
    threads: int = 1,
) -> None:
    """A model latent (``z0..``), its kNN graph, UMAP and Leiden, and the UMAP panels coloured by ``color_keys``."""
    names = adata.obs_names
    write_parquet(pd.DataFrame(z, index=names, columns=[f"z{i}" for i in range(z.shape[1])]), latent)
    conn, dist, coords, clusters = knn_umap_leiden(z, names, embedding, threads)
    save_knn(knn, names, conn, dist, embedding["n_neighbors"])
    obs = adata.obs.copy()
    obs["leiden"] = clusters["leiden"]
    write_parquet(coords, umap)
    clusters.index.name = "obs_name"
    write_csv(clusters, leiden)
    plot_umaps(coords, obs, [k for k in [*color_keys, "leiden"] if k], umap_png)
