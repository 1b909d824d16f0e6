"""An exponential moving average of the weights (torch.optim.swa_utils.AveragedModel), per step.

``ema_decay`` d: after every optimizer step, ema = d * ema + (1 - d) * weights; its horizon is about
1 / (1 - d) steps (0.99: the last ~100 steps, 0.999: ~1,000). BatchNorm buffers are averaged the same
way (``use_buffers=True``), so the EMA model's running statistics match its weights and no extra pass
over the data is needed. The trial then evaluates both: ``val_*`` are the EMA weights' (what the
scheduler, Optuna and the leaderboard see), ``val_acc_raw``/``val_loss_raw`` the raw weights'.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    def __init__(self, model: nn.Module, *, decay: float) -> None:
        # A deep copy of the model: averaged weights live beside the trained ones, on the same device.
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @property
    def model(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict:
        """``model``: a plain state_dict of the architecture (what inference loads); ``n_averaged``."""
        return {"model": self.model.state_dict(), "n_averaged": self.averaged.n_averaged.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.averaged.n_averaged.copy_(state["n_averaged"])
