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
from sma.mask_stats import MaskTally, mask_report
from sma.masking import num_to_mask, random_mask
from sma.train.checkpointing import CheckpointManager, check_resume, find_checkpoint, tag_for
from sma.train.env import DistEnv
from sma.train.memory import model_state_mb, peak_memory_mb
from sma.train.metrics import METRICS_FILE, MetricsLogger
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
    """Pretraining loss on the held-out split, averaged over all ranks, under two kinds of masks:

    - ``eval_loss``: the run's own masking. Guided masks are chosen by the current weights, so this
      follows what training optimizes but is not comparable across evaluations (nor across runs).
    - ``eval_loss_random_masks``: the same fixed-seed random masks at every evaluation, whatever the
      run's mode: comparable across steps, runs and masking modes.

    Also the mask diagnostics of ``sma.mask_stats`` for both kinds (``mask_*`` and ``mask_*_random``),
    from the same fixed-seed masks: the passes' own masks, plus one second draw per batch (another
    generator seed) for ``mask_draw_overlap``, which for the run's masks costs one more forward pass.

    Leaves the global RNG untouched so training continues identically."""

    def __init__(self, cfg: TrainConfig, env: DistEnv) -> None:
        from sma.data import build_loader

        self.cfg, self.env = cfg, env
        self.loader = build_loader(cfg, split="eval", rank=env.rank, world_size=env.world_size)

    def _generator(self, draw: int) -> torch.Generator:
        """Fixed seeds, one stream per rank and draw (draw 0 gives the masks of the losses)."""
        seed = self.cfg.seed + _EVAL_SEED_OFFSET + self.env.rank + draw * _RANK_SEED_STRIDE
        return torch.Generator(self.env.device).manual_seed(seed)

    def _second_draw(self, engine: Any, batch: Batch, progress: float, gen: torch.Generator,
                     mode: str) -> torch.Tensor:
        """Another mask (B, n) for the same batch; random masks need no model."""
        if mode == "random":
            return random_mask(batch.valid, num_to_mask(batch.valid.sum(1), self.cfg.masking.ratio), generator=gen)
        return engine(batch, progress=progress, generator=gen, mode=mode).mask

    def _pass(self, engine: Any, progress: float, mode: str) -> tuple[torch.Tensor, MaskTally]:
        gen, second = self._generator(0), self._generator(1)
        total = torch.zeros(2, dtype=torch.float64, device=self.env.device)  # loss sum, batches
        tally = MaskTally(self.cfg.model.max_len, self.env.device)
        for i, batch in enumerate(self.loader):
            if i == self.cfg.eval_batches:
                break
            batch = batch.to(self.env.device)
            out = engine(batch, progress=progress, generator=gen, mode=mode)
            total[0] += out.loss.double()
            total[1] += 1
            tally.add(out.mask, batch.valid, batch.inputs if batch.is_discrete else None)
            tally.add_overlap(out.mask, self._second_draw(engine, batch, progress, second, mode))
        return total, tally

    @torch.no_grad()
    def __call__(self, engine: Any, progress: float) -> dict[str, float]:
        saved = rng_state()
        engine.eval()
        own, own_tally = self._pass(engine, progress, self.cfg.masking.mode)
        rand, rand_tally = ((own, own_tally) if self.cfg.masking.mode == "random"
                            else self._pass(engine, progress, "random"))
        engine.train()
        set_rng_state(saved)
        totals = torch.cat([own, rand, own_tally.vector, rand_tally.vector])
        torch.distributed.all_reduce(totals)  # one call for the losses and every diagnostic sum
        size = own_tally.vector.numel()
        own_loss, random_loss = (float(t[0] / t[1].clamp(min=1)) for t in totals[:4].view(2, 2))
        own_tally.load(totals[4:4 + size])
        rand_tally.load(totals[4 + size:])
        return {"eval_loss": own_loss, "eval_loss_random_masks": random_loss, **own_tally.summary(),
                **rand_tally.summary("_random")}


class Trainer:
    """The one training engine: DeepSpeed, resume, optimizer steps with gradient accumulation, logging,
    checkpoints and preemption, for one run on this rank. ``run()`` returns the process exit code.

    Pretraining (``Pretrainer``) and fine-tuning (``sma.finetune.trainer.Finetuner``) differ only in the
    hooks: ``build_model``, ``param_groups``, ``build_loader``, ``forward`` (loss and per-micro-batch
    figures), ``after_step`` (evaluation; may end the run early) and the extra state they checkpoint.
    """

    command = "train"  # names the progress bar

    def __init__(self, cfg: TrainConfig, env: DistEnv) -> None:
        import deepspeed

        if cfg.precision == "fp16" and env.device.type == "cpu":
            raise ConfigError("precision: fp16 needs a GPU (DeepSpeed's CPU accelerator has no fp16); "
                              "use bf16 or fp32 on CPU")
        self.cfg, self.env = cfg, env
        self.flag = PreemptionFlag()  # first: a signal during a long start-up must not kill the job
        self.run_dir = Path(cfg.run_dir)
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", cfg.keep_last, env)
        resume_from = find_checkpoint(cfg.resume, self.ckpt.root)
        if resume_from is not None:
            check_resume(cfg, resume_from)
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
        model = self.build_model()
        groups = self.param_groups(model)
        names = {id(p): n for n, p in model.named_parameters()}
        # Saved in each checkpoint's meta.json: without ZeRO, DeepSpeed stores bf16/fp16 master weights per
        # group, by position only, and the export needs their names whatever the hooks grouped.
        self.optimizer_params = [[names[id(p)] for p in g["params"]] for g in groups]
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

        self.loader = self.build_loader()
        self.step = 0
        if resume_from is not None:
            self._restore(resume_from)
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        self.logger = MetricsLogger(self.run_dir, enabled=env.is_main, start_step=self.step,
                                    max_steps=cfg.max_steps, wandb_mode=cfg.wandb_mode,
                                    wandb_project=cfg.wandb_project, config=to_dict(cfg), desc=self.command)

    # -- hooks ------------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        return param_groups(model, self.cfg.optim.weight_decay)

    def build_loader(self) -> Any:
        raise NotImplementedError

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """The loss of one micro-batch and figures to average over the step's micro-batches and ranks."""
        raise NotImplementedError

    def after_step(self, record: dict[str, Any]) -> bool:
        """Runs on every rank after each optimizer step (evaluation goes here); may add to ``record``.
        Returns True to end the run after this step (early stopping)."""
        return False

    def extra_state(self) -> dict[str, Any]:
        """Checkpointed with the trainer state and handed back to ``load_extra_state`` on resume."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

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
        self.load_extra_state(state.get("extra", {}))
        log.info("rank %d resumed from %s at step %d", self.env.rank, tag_dir, self.step)

    def _trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "rng": rng_state(), "data": self.loader.state_dict(),
                "rank": self.env.rank, "world_size": self.env.world_size,
                "micro_batch_size": self.cfg.data.micro_batch_size, "extra": self.extra_state()}

    def _save(self) -> None:
        path = self.ckpt.save(self.engine, self.step, self._trainer_state(), to_yaml(self.cfg), self.optimizer_params)
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
        engine = self.engine
        lr = engine.get_lr()[0]
        start = time.perf_counter()
        accum = engine.gradient_accumulation_steps()
        own_norm = None
        sums: dict[str, Any] = {}
        for _ in range(accum):
            batch = next(batches).to(self.env.device)  # the model casts values to its dtype
            loss, figures = self.forward(batch)
            engine.backward(loss)
            if engine.is_gradient_accumulation_boundary():
                own_norm = self._grad_norm_untracked_by_deepspeed()
            engine.step()
            for key, value in {"loss": loss.detach(), "tokens": batch.valid.sum(),
                               "samples": batch.valid.shape[0], **figures}.items():
                sums[key] = sums.get(key, 0.0) + value
        # Summed over micro-batches, then over ranks, with the stop flag last. Kept on the device (NCCL
        # reduces device tensors) and read once per step.
        keys = list(sums)
        local = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=self.env.device).reshape(())
                             for k in keys] + [torch.tensor(float(self.flag.raised), dtype=torch.float64,
                                                            device=self.env.device)])
        torch.distributed.all_reduce(local)  # also tells every rank whether any rank was signalled
        totals = dict(zip(keys + ["preempt"], local.cpu().tolist()))
        elapsed = time.perf_counter() - start
        self.step += 1
        n = accum * self.env.world_size
        grad_norm = engine.get_global_grad_norm() if own_norm is None else own_norm
        record = {"step": self.step, "loss": totals.pop("loss") / n, "lr": lr,
                  "grad_norm": None if grad_norm is None else float(grad_norm)}
        tokens, samples, preempt = totals.pop("tokens"), totals.pop("samples"), totals.pop("preempt")
        record.update({k: v / n for k, v in totals.items()})
        record.update({"tokens_per_s": tokens / elapsed, "samples_per_s": samples / elapsed, "step_seconds": elapsed,
                       "preempt": preempt > 0})
        return record

    def summary(self) -> str:
        """What a finished run leaves and what to run next (printed by rank 0 at the end)."""
        run_dir, latest = self.run_dir, self.logger.latest
        figures = ", ".join(f"{k} {latest[k]:.4f}" for k in ("loss", "eval_loss", "eval_loss_random_masks")
                            if isinstance(latest.get(k), float))
        lines = [f"Done: {self.step} steps in {run_dir}" + (f" ({figures})" if figures else ""),
                 f"  checkpoint  {self.ckpt.root / tag_for(self.step)}",
                 f"  metrics     {run_dir / METRICS_FILE}",
                 f"  config      {run_dir / 'config.yaml'}"]
        if self.logger.wandb_run is not None:
            lines.append(f"  wandb       {run_dir / 'wandb'} ({self.logger.wandb_mode}; upload an offline run with "
                         f"`wandb sync {run_dir / 'wandb'}/offline-run-*`)")
        return "\n".join(lines)

    def run(self) -> int:
        """Train to ``max_steps``; returns 0, or ``PREEMPTED_EXIT_CODE`` after a stop signal."""
        try:
            with logging_redirect_tqdm():  # log lines print above the progress bar, not through it
                return self._run()
        finally:
            self.logger.close()

    def _run(self) -> int:
        cfg = self.cfg
        if self.step >= cfg.max_steps or self.finished():
            log.info("nothing to do: step %d of max_steps %d, finished", self.step, cfg.max_steps)
            return 0
        batches = iter(self.loader)
        self.engine.train()
        while self.step < cfg.max_steps:
            record = self._train_step(batches)
            preempted = record.pop("preempt")
            stop = self.after_step(record)
            last = self.step == cfg.max_steps or stop
            if self.step % cfg.log_every == 0 or any(k.startswith("eval") for k in record) or last or preempted:
                record.update(self._memory())
                self.logger.log(record)
            self.logger.progress(self.step, record["loss"], record["lr"], record["tokens_per_s"])
            if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or last or preempted:
                self._save()
            if preempted:
                log.warning("rank %d: stop signal received; saved step %d, exiting for requeue",
                            self.env.rank, self.step)
                return PREEMPTED_EXIT_CODE
            if stop:
                break
        return 0

    def finished(self) -> bool:
        """True when a resumed run had already ended early (it must not train further)."""
        return False


class Pretrainer(Trainer):
    """Self-guided masked pretraining: masks chosen in encoder layer 1, the loss on masked positions,
    periodic evaluation under the run's own and under fixed random masks."""

    command = "pretrain"

    def __init__(self, cfg: TrainConfig, env: DistEnv) -> None:
        super().__init__(cfg, env)
        self.evaluator = Evaluator(cfg, env) if cfg.eval_every else None

    def build_model(self) -> torch.nn.Module:
        from sma.model import build_pretrain_model

        return build_pretrain_model(self.cfg.model, self.cfg.masking)

    def build_loader(self) -> Any:
        from sma.data import build_loader

        return build_loader(self.cfg, split="train", rank=self.env.rank, world_size=self.env.world_size)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        out = self.engine(batch, progress=self.step / self.cfg.max_steps)
        return out.loss, {"masked_ratio": out.masked_ratio, "selection_seconds": out.selection_seconds}

    def after_step(self, record: dict[str, Any]) -> bool:
        cfg = self.cfg
        # share of the step spent choosing masks: mean seconds per micro-batch x micro-batches / step time
        seconds = record.pop("selection_seconds")
        record["selection_share"] = seconds * self.engine.gradient_accumulation_steps() / record["step_seconds"]
        if self.evaluator and self.step % cfg.eval_every == 0:
            record.update(self.evaluator(self.engine, self.step / cfg.max_steps))
            log.info("eval at step %d: eval_loss %.4f (the run's %s masks%s), eval_loss_random_masks %.4f "
                     "(fixed random masks: comparable across steps and runs)", self.step, record["eval_loss"],
                     cfg.masking.mode, ", chosen by the current weights" if cfg.masking.mode == "guided" else "",
                     record["eval_loss_random_masks"])
            log.info("masks at step %d (the run's / random): %s", self.step, mask_report(record))
        return False

    def summary(self) -> str:
        ckpts, run_dir = self.ckpt.root, self.run_dir
        return "\n".join([super().summary(), "Next:",
                          "  continue    the same command with max_steps=N resume=auto",
                          f"  export      python -m sma.export {ckpts} {run_dir / 'model.pt'}",
                          f"  fine-tune   python train/finetune.py --config configs/finetune/csv.yaml init={ckpts} "
                          "task.path=FILE ...",
                          f"  masks       python -m sma.visualize {ckpts} INPUTS --out {run_dir / 'masks'}",
                          f"  embed       python -m sma.embed {ckpts} INPUT --out {run_dir / 'embeddings.npy'}"])
