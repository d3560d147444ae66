"""scvi-tools model classes (registration, train(), user methods); the maths lives in rvi.module."""

from rvi.models._multimodal import RegularizedMultimodalVI, align_modalities
from rvi.models._rna import AmbientRegularizedSCVI

__all__ = ["AmbientRegularizedSCVI", "RegularizedMultimodalVI", "align_modalities"]
