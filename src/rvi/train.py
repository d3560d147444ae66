"""Training plan: scvi-tools' TrainingPlan plus per-modality learning rates."""

from __future__ import annotations

import torch
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

    def compute_and_log_metrics(self, loss_output, metrics, mode):
        """scvi-tools' logging, except that with DDP the extra metrics (penalties) are logged outside
        ``torch.inference_mode``.

        scvi-tools logs every metric under ``torch.inference_mode``; with DDP (``sync_dist``) Lightning
        later averages the logged values across processes *in place*, outside inference mode, which
        fails on inference tensors ("Inplace update to inference tensor outside InferenceMode"). Our
        models return extra metrics, so they are logged here under ``torch.no_grad`` instead.
        """
        if not self.use_sync_dist or not loss_output.extra_metrics:
            return super().compute_and_log_metrics(loss_output, metrics, mode)
        extra = loss_output.extra_metrics
        loss_output.extra_metrics = {}
        try:
            super().compute_and_log_metrics(loss_output, metrics, mode)
        finally:
            loss_output.extra_metrics = extra
        with torch.no_grad():
            for key, value in extra.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    continue  # scvi-tools does not log non-scalar extra metrics either
                self.log(
                    f"{key}_{mode}",
                    value.detach() if isinstance(value, torch.Tensor) else value,
                    on_step=self.on_step,
                    on_epoch=self.on_epoch,
                    batch_size=loss_output.n_obs_minibatch,
                    sync_dist=True,
                )

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
