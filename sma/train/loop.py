"""The pretraining loop: DeepSpeed engine, resume, optimizer steps with gradient accumulation,
periodic evaluation with fixed-seed masks, logging, checkpoints and preemption."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from sma.config import ConfigError, TrainConfig, to_dict, to_yaml
from sma.inputs import Batch
from sma.train.checkpointing import CheckpointManager, find_checkpoint
from sma.train.env import DistEnv
from sma.train.memory import model_state_mb, peak_memory_mb
from sma.train.metrics import MetricsLogger
from sma.train.optim import batch_plan, client_optimizer, deepspeed_config, param_groups, scheduler_factory
from sma.train.preemption import PREEMPTED_EXIT_CODE, PreemptionFlag
from sma.train.rng import rng_state, seed_everything, set_rng_state

log = logging.getLogger(__name__)

# Offsets that keep the per-rank mask streams and the evaluation masks apart from the init seed.
_RANK_SEED_STRIDE = 1_000_003
_EVAL_SEED_OFFSET = 7_777_777


def rescale_data_state(state: dict[str, Any], saved_stride: int, stride: int, loader: Any) -> dict[str, Any]:
    """A reader position saved when one batch on every rank took ``saved_stride`` samples (world size x
    micro-batch size), for a run where it takes ``stride``.

    Epoch-based readers count batches per rank (``{"epoch", "batch"}``); the run keeps its epoch and
    the same share of it, so no epoch is lost or repeated (which samples of the current epoch come next
    differs, as the epoch is split differently). Readers with a global position (streaming) pass as is.
    """
    if "batch" not in state:
        return state
    batch = state["batch"] * saved_stride // stride
    limit = getattr(loader, "batches_per_epoch", batch)
    return {**state, "batch": min(batch, limit)}


class Evaluator:
    """Pretraining loss on the held-out split with the same masks every time (fixed-seed generator),
    averaged over all ranks. Leaves the global RNG untouched so training continues identically."""

    def __init__(self, cfg: TrainConfig, env: DistEnv) -> None:
        from sma.data import build_loader

        self.cfg, self.env = cfg, env
        self.loader = build_loader(cfg, split="eval", rank=env.rank, world_size=env.world_size)

    @torch.no_grad()
    def __call__(self, engine: Any, progress: float) -> float:
        saved = rng_state()
        gen = torch.Generator(self.env.device).manual_seed(self.cfg.seed + _EVAL_SEED_OFFSET + self.env.rank)
        engine.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.env.device)  # loss sum, batches
        for i, batch in enumerate(self.loader):
            if i == self.cfg.eval_batches:
                break
            out = engine(batch.to(self.env.device), progress=progress, generator=gen)
            total[0] += out.loss.double()
            total[1] += 1
        engine.train()
        set_rng_state(saved)
        torch.distributed.all_reduce(total)
        return float(total[0] / total[1].clamp(min=1))


class Pretrainer:
    """One pretraining run on this rank; ``run()`` returns the process exit code (0 or 124)."""

    def __init__(self, cfg: TrainConfig, env: DistEnv) -> None:
        import deepspeed

        from sma.data import build_loader
        from sma.model import build_pretrain_model

        if cfg.precision == "fp16" and env.device.type == "cpu":
            raise ConfigError("precision: fp16 needs a GPU (DeepSpeed's CPU accelerator has no fp16); "
                              "use bf16 or fp32 on CPU")
        self.cfg, self.env = cfg, env
        self.flag = PreemptionFlag()  # first: a signal during a long start-up must not kill the job
        self.run_dir = Path(cfg.run_dir)
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", cfg.keep_last, env)
        resume_from = find_checkpoint(cfg.resume, self.ckpt.root)
        universal = resume_from is not None and self.ckpt.needs_universal(resume_from, cfg.zero_stage)
        if universal:
            resume_from = self.ckpt.to_universal(resume_from)

        micro, _ = batch_plan(cfg, env.world_size)
        if micro != cfg.data.micro_batch_size:  # the global batch on this world size needs smaller ones
            if env.is_main:
                log.info("optim.global_batch_size %d on %d rank(s): micro-batches of %d (data.micro_batch_size "
                         "%d is the upper bound)", cfg.optim.global_batch_size, env.world_size, micro,
                         cfg.data.micro_batch_size)
            cfg.data.micro_batch_size = micro
        seed_everything(cfg.seed)  # identical initial weights on every rank
        model = build_pretrain_model(cfg.model, cfg.masking)
        groups = param_groups(model, cfg.optim.weight_decay)
        self.engine, *_ = deepspeed.initialize(
            model=model, model_parameters=groups, optimizer=client_optimizer(cfg, groups),
            lr_scheduler=scheduler_factory(cfg),
            config=deepspeed_config(cfg, env.world_size, load_universal=universal))
        if env.is_main:
            inner = getattr(self.engine, "basic_optimizer", None) or self.engine.optimizer
            log.info("engine: %d rank(s), ZeRO stage %d, %s, optimizer %s (wrapped as %s), %d micro-batch(es) "
                     "of %d per rank and step, %d CPU thread(s) per rank", env.world_size, cfg.zero_stage,
                     cfg.precision, type(inner).__name__, type(self.engine.optimizer).__name__,
                     self.engine.gradient_accumulation_steps(), cfg.data.micro_batch_size, torch.get_num_threads())
        seed_everything(cfg.seed + _RANK_SEED_STRIDE * (env.rank + 1))  # each rank draws its own masks

        self.loader = build_loader(cfg, split="train", rank=env.rank, world_size=env.world_size)
        self.step = 0
        if resume_from is not None:
            self._restore(resume_from)
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        self.evaluator = Evaluator(cfg, env) if cfg.eval_every else None
        self.logger = MetricsLogger(self.run_dir, enabled=env.is_main, start_step=self.step,
                                    max_steps=cfg.max_steps, wandb_mode=cfg.wandb_mode,
                                    wandb_project=cfg.wandb_project, config=to_dict(cfg))

    def _restore(self, tag_dir: Path) -> None:
        state = self.ckpt.load(self.engine, tag_dir)
        self.step = int(state["step"])
        micro = self.cfg.data.micro_batch_size
        saved_micro = int(state.get("micro_batch_size", micro))
        if (state["world_size"], saved_micro) == (self.env.world_size, micro):
            set_rng_state(state["rng"])
            self.loader.load_state_dict(state["data"])
        else:
            # Other ranks or batches, other streams: reseed per rank and step so the run stays reproducible.
            seed_everything(self.cfg.seed + _RANK_SEED_STRIDE * (self.env.rank + 1) + self.step)
            self.loader.load_state_dict(rescale_data_state(state["data"], state["world_size"] * saved_micro,
                                                           self.env.world_size * micro, self.loader))
        log.info("rank %d resumed from %s at step %d", self.env.rank, tag_dir, self.step)

    def _trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "rng": rng_state(), "data": self.loader.state_dict(),
                "rank": self.env.rank, "world_size": self.env.world_size,
                "micro_batch_size": self.cfg.data.micro_batch_size}

    def _save(self) -> None:
        path = self.ckpt.save(self.engine, self.step, self._trainer_state(), to_yaml(self.cfg))
        log.info("saved checkpoint %s", path)

    def _grad_norm_untracked_by_deepspeed(self) -> float | None:
        """Global gradient norm for plain fp32 without ZeRO, where DeepSpeed clips with torch but keeps no
        norm (its ZeRO and bf16/fp16 optimizers do). Gradients are already averaged over ranks here."""
        if self.cfg.zero_stage or self.cfg.precision != "fp32":
            return None
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    def _memory(self) -> dict[str, float]:
        """The largest per-rank peak memory and model-state size (a collective: all ranks call it)."""
        mem = torch.tensor([peak_memory_mb(self.env.device), model_state_mb(self.engine)], dtype=torch.float64,
                           device=self.env.device)
        torch.distributed.all_reduce(mem, op=torch.distributed.ReduceOp.MAX)
        return {"peak_memory_mb": float(mem[0]), "model_state_mb": float(mem[1])}

    def _train_step(self, batches: Iterator[Batch]) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` micro-batches; returns this step's global metrics."""
        engine, cfg = self.engine, self.cfg
        lr = engine.get_lr()[0]
        start = time.perf_counter()
        # Summed over micro-batches, then over ranks: loss, masked ratio, tokens, samples, selection s,
        # stop flag. Kept on the device (NCCL reduces device tensors) and read once per step.
        local = torch.zeros(6, dtype=torch.float64, device=self.env.device)
        accum = engine.gradient_accumulation_steps()
        own_norm = None
        for _ in range(accum):
            batch = next(batches).to(self.env.device)  # the model casts values to its dtype
            out = engine(batch, progress=self.step / cfg.max_steps)
            engine.backward(out.loss)
            if engine.is_gradient_accumulation_boundary():
                own_norm = self._grad_norm_untracked_by_deepspeed()
            engine.step()
            local[0] += out.loss.detach().double()
            local[1] += out.masked_ratio.double()
            local[2] += batch.valid.sum()
            local[3] += batch.valid.shape[0]
            local[4] += out.selection_seconds
        local[5] = float(self.flag.raised)
        torch.distributed.all_reduce(local)  # also tells every rank whether any rank was signalled
        local = local.cpu()
        elapsed = time.perf_counter() - start
        self.step += 1
        n = accum * self.env.world_size
        grad_norm = engine.get_global_grad_norm() if own_norm is None else own_norm
        record = {
            "step": self.step,
            "loss": float(local[0] / n),
            "lr": lr,
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "masked_ratio": float(local[1] / n),
            "tokens_per_s": float(local[2] / elapsed),
            "samples_per_s": float(local[3] / elapsed),
            "selection_share": float(local[4] / self.env.world_size / elapsed),
            "step_seconds": elapsed,
            "preempt": bool(local[5] > 0),
        }
        return record

    def run(self) -> int:
        """Train to ``max_steps``; returns 0, or ``PREEMPTED_EXIT_CODE`` after a stop signal."""
        try:
            with logging_redirect_tqdm():  # log lines print above the progress bar, not through it
                return self._run()
        finally:
            self.logger.close()

    def _run(self) -> int:
        cfg = self.cfg
        if self.step >= cfg.max_steps:
            log.info("nothing to do: step %d >= max_steps %d", self.step, cfg.max_steps)
            return 0
        batches = iter(self.loader)
        self.engine.train()
        while self.step < cfg.max_steps:
            record = self._train_step(batches)
            preempted = record.pop("preempt")
            if self.evaluator and self.step % cfg.eval_every == 0:
                record["eval_loss"] = self.evaluator(self.engine, self.step / cfg.max_steps)
            last = self.step == cfg.max_steps
            if self.step % cfg.log_every == 0 or "eval_loss" in record or last or preempted:
                record.update(self._memory())
                self.logger.log(record)
            self.logger.progress(self.step, record["loss"], record["lr"], record["tokens_per_s"])
            if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or last or preempted:
                self._save()
            if preempted:
                log.warning("rank %d: stop signal received; saved step %d, exiting for requeue",
                            self.env.rank, self.step)
                return PREEMPTED_EXIT_CODE
        return 0
