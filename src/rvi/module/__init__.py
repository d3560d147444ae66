"""The torch module family: one N-modality VAE; the RNA model is its one-modality case."""

from rvi.module.vae import ModalityConfig, RegularizedVAE

__all__ = ["ModalityConfig", "RegularizedVAE"]
