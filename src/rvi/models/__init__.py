"""scvi-tools model classes (registration, train(), user methods); the maths lives in rvi.module."""

from rvi._logging import quiet_third_party_logs
from rvi.models._multimodal import RegularizedMultimodalVI, align_modalities
from rvi.models._rna import AmbientRegularizedSCVI

quiet_third_party_logs()  # scvi-tools has imported Lightning by now, with its handlers

__all__ = ["AmbientRegularizedSCVI", "RegularizedMultimodalVI", "align_modalities"]
