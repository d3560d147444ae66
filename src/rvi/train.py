"""Training plan: scvi-tools' TrainingPlan plus per-modality learning rates."""

from __future__ import annotations

from scvi.train import TrainingPlan


def default_kl_warmup_epochs(max_epochs: int) -> int:
    """KL warm-up that completes in typical runs.

    scvi-tools warms up over 400 epochs, but atlas runs stop early after ~100 epochs, so the z-KL
    would never reach full weight. A quarter of max_epochs, capped at 20, finishes well before
    early stopping can trigger (its patience is 45 epochs) and still lets the decoder find
    structure before the prior pulls the latent in.
    """
    return max(1, min(20, max_epochs // 4))


class RVITrainingPlan(TrainingPlan):
    """TrainingPlan with ``modality_lr_multiplier={"atac": 2.0}``: each modality's encoder, decoder and
    priors get lr * multiplier; shared parameters keep the base learning rate."""

    def __init__(self, module, *, modality_lr_multiplier: dict[str, float] | None = None, **kwargs):
        multipliers = dict(modality_lr_multiplier or {})
        known = list(getattr(module, "modality_names", []))
        unknown = sorted(set(multipliers) - set(known))
        if unknown:
            raise ValueError(f"modality_lr_multiplier names unknown modalities {unknown}; the model has {known}.")
        for name, value in multipliers.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"modality_lr_multiplier[{name!r}] must be a positive number, got {value!r}.")
        self.modality_lr_multiplier = multipliers
        super().__init__(module, **kwargs)

    def configure_optimizers(self):
        if not self.modality_lr_multiplier:
            return super().configure_optimizers()
        assigned, groups = set(), []
        for name, mult in self.modality_lr_multiplier.items():
            params = [p for p in self.module.modality_parameters(name) if p.requires_grad]
            assigned.update(id(p) for p in params)
            groups.append({"params": params, "lr": self.lr * mult})
        rest = [p for p in self.module.parameters() if p.requires_grad and id(p) not in assigned]
        groups.insert(0, {"params": rest, "lr": self.lr})
        config = super().configure_optimizers()
        optimizer = self.get_optimizer_creator()(groups)
        config["optimizer"] = optimizer
        if "lr_scheduler" in config:
            config["lr_scheduler"]["scheduler"].optimizer = optimizer
        return config
