"""Neural building blocks shared by every modality: FC stacks, encoders, decoders."""

from rvi.nn.blocks import Decoder, FCLayers, GaussianEncoder, LibraryEncoder

__all__ = ["Decoder", "FCLayers", "GaussianEncoder", "LibraryEncoder"]
