"""The engine: DeepSpeed or plain DDP behind one interface.

    engine = build_engine(EngineConfig.from_pretrain(cfg), module, device, world)
    with engine.micro(last):          # DDP: no gradient all-reduce unless `last`
        loss = engine.forward(v1, v2, risk, missing)
        engine.backward(loss)
    engine.grads_finite()              # this rank's (reduced) gradients, before the step
    grad_norm = engine.step()          # clip, AdamW, schedule
    engine.save(folder, step) / engine.load(folder, step)

Gradient all-reduce on accumulation micro-steps: DDP runs the micro-steps before the last under
`no_sync()`. DeepSpeed decides itself (engine.allreduce_gradients): ZeRO 0-1 reduce only at the
accumulation boundary; ZeRO 2-3 reduce-scatter every micro-step by design (each rank keeps only
its partition of the gradients).

Checkpoint files are plain state (clef_platform.layout.checkpoint): DeepSpeed writes and reads
them through `PlainCheckpointEngine` (train/ds_plain.py), the DDP path through save_plain /
load_plain.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from clef_platform.layout import checkpoint as CK
from clef_platform.train.schedule import build_scheduler


@dataclass
class EngineConfig:
    deepspeed: bool = True
    zero_stage: int = 1
    bf16: bool = False
    use_gpu: bool = False
    micro_batch: int = 64
    grad_accum: int = 1
    grad_clip: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 20
    total_steps: int = 200
    min_lr_ratio: float = 0.1
    decay_all: bool = False           # weight decay on every parameter (recipe paper)
    schedule: str = "warmup-cosine"   # or "cosine-restarts" (train/schedule.py)
    steps_per_epoch: int = 1
    restart_epochs: int = 10
    restart_mult: int = 2
    eta_min: float = 0.0

    @classmethod
    def from_pretrain(cls, cfg, steps_per_epoch: int = 1) -> "EngineConfig":
        o = cfg.optim
        return cls(deepspeed=cfg.deepspeed.enabled, zero_stage=cfg.deepspeed.zero_stage,
                   bf16=cfg.bf16, use_gpu=cfg.use_gpu, micro_batch=cfg.batch_per_worker,
                   grad_accum=o.grad_accum, grad_clip=o.grad_clip, lr=o.lr,
                   weight_decay=o.weight_decay, betas=(o.beta1, o.beta2), eps=o.eps,
                   warmup_steps=o.warmup_steps, total_steps=cfg.steps,
                   min_lr_ratio=o.min_lr_ratio, decay_all=o.decay_all, schedule=o.schedule,
                   steps_per_epoch=steps_per_epoch, restart_epochs=o.restart_epochs,
                   restart_mult=o.restart_mult, eta_min=o.eta_min)


def deepspeed_config(cfg: EngineConfig) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.bf16},
        # A torch AdamW is passed in: DeepSpeed's FusedAdam / CPUAdam JIT-compile an op (~100 s
        # on CPU); torch's fused/foreach AdamW is as fast for this model size.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }


def param_groups(module: torch.nn.Module, cfg: EngineConfig) -> list[dict]:
    """AdamW groups: by default no weight decay on biases and norms; `decay_all` decays every
    trainable parameter (the release: AdamW(self.parameters()), lightning_contrastive.py:374)."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    if cfg.decay_all:
        return [{"params": trainable, "weight_decay": cfg.weight_decay}]
    return [{"params": [p for p in trainable if p.ndim > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0}]


def build_optimizer(module: torch.nn.Module, cfg: EngineConfig):
    """AdamW over `param_groups` and the configured schedule (train/schedule.py)."""
    optimizer = torch.optim.AdamW(param_groups(module, cfg), lr=cfg.lr, betas=cfg.betas,
                                  eps=cfg.eps)
    return optimizer, build_scheduler(optimizer, cfg.warmup_steps, cfg.total_steps,
                                      cfg.min_lr_ratio, schedule=cfg.schedule,
                                      steps_per_epoch=cfg.steps_per_epoch,
                                      restart_epochs=cfg.restart_epochs,
                                      restart_mult=cfg.restart_mult, eta_min=cfg.eta_min)


def _all_finite(tensors) -> bool:
    flags = [torch.isfinite(t).all() for t in tensors if t is not None]
    if not flags:   # nothing to check means the gradients are not where this code looks
        raise RuntimeError("no gradients to check for finiteness after backward")
    return bool(torch.stack(flags).all())


class DeepSpeedEngine:
    def __init__(self, cfg: EngineConfig, module, device):
        import deepspeed  # imported here, never in the driver (see stack-notes)
        import deepspeed.ops

        from clef_platform.train.ds_plain import PlainCheckpointEngine

        self.cfg, self.device = cfg, device
        if not cfg.use_gpu:
            # The shared-memory comm op is only used by inference all-reduce, and building it
            # JIT-compiles C++ for ~60 s on first use; training all-reduces go through gloo.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="nccl" if cfg.use_gpu else "gloo")
        optimizer, scheduler = build_optimizer(module, cfg)
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module.to(device), optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(cfg))
        # DeepSpeed's own engine loads with torch.load(weights_only=False): replace it.
        self.ds.checkpoint_engine = PlainCheckpointEngine()
        self.module = self.ds.module
        self.zero_stage = self.ds.zero_optimization_stage()

    def micro(self, last: bool):
        return contextlib.nullcontext()  # DeepSpeed knows the boundary (see module docstring)

    def forward(self, *inputs):
        return self.ds(*inputs)

    def backward(self, loss) -> None:
        boundary = self.ds.is_gradient_accumulation_boundary()
        self.ds.backward(loss)
        if not boundary:
            self.ds.step()  # only advances DeepSpeed's micro-step count before the boundary

    def grads_finite(self) -> bool:
        """This rank's gradients after the boundary backward: its ZeRO partition (ZeRO 1-3), or
        every reduced gradient (ZeRO 0)."""
        opt = self.ds.optimizer
        if self.zero_stage in (1, 2):
            grads = [g for group in opt.averaged_gradients.values() if group for g in group]
            return _all_finite(grads)
        if self.zero_stage == 3:
            return _all_finite([opt.grad_partitions_flat_buffer])
        return _all_finite([p.grad for p in self.module.parameters()])

    def step(self) -> float | None:
        self.ds.step()
        norm = self.ds.get_global_grad_norm()
        return float(norm) if norm is not None else None

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def full_params(self, module):
        """Context in which `module`'s parameters are whole on every rank (ZeRO-3)."""
        if self.zero_stage < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)

    def save(self, folder: Path, step: int) -> None:
        # save_latest=False: no `latest` file; the loop names the tag it loads.
        self.ds.save_checkpoint(str(folder), tag=f"step_{step}", save_latest=False)

    def load(self, folder: Path, step: int) -> None:
        path, _ = self.ds.load_checkpoint(str(folder), tag=f"step_{step}",
                                          load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
        if path is None:
            raise CK.CheckpointError(f"{folder}: DeepSpeed found no checkpoint step_{step}")


class DDPEngine:
    """Plain torch: DDP through ray.train.torch.prepare_model when world > 1, else the bare
    module (the single-process loop)."""

    def __init__(self, cfg: EngineConfig, module, device, world: int):
        self.cfg, self.device, self.world = cfg, device, world
        self.module = module.to(device)
        self.optimizer, self.scheduler = build_optimizer(module, cfg)
        self.zero_stage = 0
        if world > 1:
            import ray.train.torch

            self.wrapped = ray.train.torch.prepare_model(module, move_to_device=device,
                                                         parallel_strategy="ddp")
        else:
            self.wrapped = module

    def micro(self, last: bool):
        # Micro-steps before the last accumulate locally; the last one all-reduces the sum.
        if last or not hasattr(self.wrapped, "no_sync"):
            return contextlib.nullcontext()
        return self.wrapped.no_sync()

    def forward(self, *inputs):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            return self.wrapped(*inputs)

    def backward(self, loss) -> None:
        (loss / self.cfg.grad_accum).backward()

    def grads_finite(self) -> bool:
        return _all_finite([p.grad for p in self.module.parameters()])

    def step(self) -> float:
        params = [p for p in self.module.parameters() if p.grad is not None]
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def full_params(self, module):
        return contextlib.nullcontext()

    def save(self, folder: Path, step: int) -> None:
        if _rank() == 0:   # replicas are identical; rank 0 writes, every rank reads
            CK.save_plain({"step": step, "model": self.module.state_dict(),
                           "optimizer": self.optimizer.state_dict(),
                           "scheduler": self.scheduler.state_dict()}, Path(folder) / CK.DDP_STATE)

    def load(self, folder: Path, step: int) -> None:
        state = CK.load_plain(Path(folder) / CK.DDP_STATE, map_location="cpu")
        if state.get("step") != step:
            raise CK.CheckpointError(f"{folder}/{CK.DDP_STATE}: step {state.get('step')}, "
                                     f"expected {step}")
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def build_engine(cfg: EngineConfig, module, device, world: int):
    if cfg.deepspeed:
        return DeepSpeedEngine(cfg, module, device)
    return DDPEngine(cfg, module, device, world)
