"""The trainable module per method: the CLEF encoder plus what the objective needs around it.

`PretrainModule.forward(v1, v2, risk, missing)` returns the loss, so DeepSpeed / DDP wrap one
module and the loop stays method-agnostic:

- clef:   z = encoder(v); `clef_model.loss.clef_loss(z1, z2, risk, missing)` (distributed-exact)
- simclr: z = encoder(v); `clef_model.loss.info_nce(z1, z2)` (distributed-exact)
- byol:   online projector + predictor; target = EMA copy of encoder + projector (kept outside
          the optimised module, updated by `after_step`)
- moco:   query projector; key = EMA copy; a `MoCoQueue` of negatives (updated once per step)

`variant="paper"` (`--baseline-variant paper`) is the authors' release instead
(clef/lightning/lightning_contrastive.py): no projector (the encoder's embedding is the feature);
MoCo one direction (queries of view 1 against keys of view 2), queue 65,536, momentum 0.999; BYOL
predictor Linear(d, d/2)-BatchNorm-ReLU-Linear(d/2, d), target momentum 0.996. The release enqueues
each step's keys twice, the second time unnormalised (its _moco_loss enqueues, then training_step
again); here they are enqueued once, normalised. Its EMA update runs before the step's target
forward; here it runs after the optimiser step, which is the same sequence of target weights.

The encoder is always `module.encoder`, a plain `Net1D`, so `clef_model.save_encoder` exports it.
"""

from __future__ import annotations

import torch
from torch import nn

from clef_model import build_encoder
from clef_model import loss as L


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    # BYOL / MoCo v2 heads. LayerNorm instead of BatchNorm: per-sample, so data parallelism
    # needs no SyncBN and the objective does not depend on the per-rank batch split.
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.LayerNorm(d_hidden), nn.ReLU(inplace=True),
                         nn.Linear(d_hidden, d_out))


def _paper_predictor(d: int) -> nn.Sequential:
    # The release's BYOL predictor (lightning_contrastive.py:91-96). BatchNorm statistics are
    # per worker (no SyncBN), as on the release's one GPU with its whole batch.
    return nn.Sequential(nn.Linear(d, d // 2), nn.BatchNorm1d(d // 2), nn.ReLU(),
                         nn.Linear(d // 2, d))


class PretrainModule(nn.Module):
    def __init__(self, scale: str, method: str, temperature: float = 0.07,
                 activation_checkpointing: bool = False, moco_queue: int = 4096,
                 momentum: float = 0.99, variant: str = "platform"):
        super().__init__()
        if variant not in ("platform", "paper"):
            raise ValueError(f"baseline variant must be platform or paper, got {variant!r}")
        self.method, self.variant = method, variant
        self.temperature = temperature
        self.momentum = momentum
        self.moco_queue_size = moco_queue
        self.encoder = build_encoder(scale, activation_checkpointing=activation_checkpointing)
        # The released architecture keeps BatchNorm modules that forward never uses: freeze them,
        # so DDP does not wait for their gradients and the optimiser does not carry them.
        unused = set(self.encoder.unused_state_keys())
        for name, p in self.encoder.named_parameters():
            if name in unused:
                p.requires_grad_(False)
        d = self.encoder.embedding_dim
        if variant == "paper" and method in ("byol", "moco"):
            self.projector = nn.Identity()
            if method == "byol":
                self.predictor = _paper_predictor(d)
        elif method == "byol":
            self.projector = _mlp(d, 2 * d, d)
            self.predictor = _mlp(d, 2 * d, d)
        elif method == "moco":
            self.projector = _mlp(d, 2 * d, min(d, 128))
        elif method not in ("clef", "simclr"):
            raise ValueError(f"unknown method {method!r}")
        # Momentum branch and queue live outside the optimised module's parameters (see
        # `attach_target`): DeepSpeed / DDP must not partition, average or step them.
        self._target: list[nn.Module] = []
        self._queue: list[L.MoCoQueue] = []

    # -- momentum branch ----------------------------------------------------------------------
    def attach_target(self, device) -> None:
        if self.method not in ("byol", "moco"):
            return
        target = L.make_target(nn.Sequential(self.encoder, self.projector)).to(device)
        self._target = [target]
        if self.method == "moco":
            dim = (self.encoder.embedding_dim if isinstance(self.projector, nn.Identity)
                   else self.projector[-1].out_features)
            self._queue = [L.MoCoQueue(dim, self.moco_queue_size).to(device)]

    def extra_state(self) -> dict:
        """Momentum branch + queue, for checkpoints (client state)."""
        out = {}
        if self._target:
            out["target"] = self._target[0].state_dict()
        if self._queue:
            out["queue"] = self._queue[0].state_dict()
        return out

    def load_extra_state(self, state: dict) -> None:
        if self._target and "target" in state:
            self._target[0].load_state_dict(state["target"])
        if self._queue and "queue" in state:
            self._queue[0].load_state_dict(state["queue"])

    @torch.no_grad()
    def after_step(self) -> None:
        """Once per optimiser step: EMA of the target; MoCo enqueues the step's keys."""
        if self._target:
            L.momentum_update(self._target[0], nn.Sequential(self.encoder, self.projector),
                              self.momentum)
        pending = getattr(self, "_pending_keys", None)
        if self._queue and pending:
            # every micro-batch's keys of this step (gradient accumulation), once per step
            self._queue[0].enqueue(torch.cat(pending))
            self._pending_keys = []

    # -- loss -----------------------------------------------------------------------------------
    def forward(self, v1: torch.Tensor, v2: torch.Tensor, risk: torch.Tensor | None = None,
                missing: torch.Tensor | None = None) -> torch.Tensor:
        if self.method in ("clef", "simclr"):
            # One encoder pass over both views (same weights; halves kernel launches).
            z = self.encoder(torch.cat([v1, v2]))
            z = z.float()
            z1, z2 = z[: v1.shape[0]], z[v1.shape[0]:]
            if self.method == "clef":
                return L.clef_loss(z1, z2, risk, missing, temperature=self.temperature)
            return L.info_nce(z1, z2, temperature=self.temperature)
        target = self._target[0]
        with torch.no_grad():
            t = target(torch.cat([v1, v2])).float()
        h = self.projector(self.encoder(torch.cat([v1, v2]))).float()
        n = v1.shape[0]
        if self.method == "byol":
            p = self.predictor(h).float()
            return L.byol_loss(p[:n], p[n:], t[:n], t[n:])
        q1, q2, k1, k2 = h[:n], h[n:], t[:n], t[n:]
        queue = self._queue[0]
        if not hasattr(self, "_pending_keys") or self._pending_keys is None:
            self._pending_keys = []
        if self.variant == "paper":
            # the release: one direction, q(view 1) against k(view 2); only k2 is enqueued
            self._pending_keys.append(k2.detach())
            return L.moco_loss(q1, k2, queue, self.temperature)
        # platform: symmetrised, queries of one view against keys of the other
        self._pending_keys.append(torch.cat([k1, k2]).detach())
        return 0.5 * (L.moco_loss(q1, k2, queue, self.temperature)
                      + L.moco_loss(q2, k1, queue, self.temperature))


def build_module(cfg) -> PretrainModule:
    return PretrainModule(cfg.scale, cfg.method, cfg.temperature,
                          cfg.deepspeed.activation_checkpointing, cfg.moco_queue, cfg.momentum,
                          cfg.baseline_variant)
