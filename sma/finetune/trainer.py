"""Fine-tuning on the one training engine (``sma.train.loop.Trainer``): a pretrained encoder, a readout
head, epochs over a task's train split, the validation and test metrics after every epoch, early stopping,
and a sweep over learning rates and seeds whose results ``sma.finetune.results`` tabulates.

Layout of a fine-tuning run directory::

    <run_dir>/config.yaml                 the resolved config
    <run_dir>/lr0.0001-seed0/             one trial: its own checkpoints/, metrics.jsonl, config.yaml
    <run_dir>/lr0.0001-seed0/trial.json   written when the trial ends: every epoch's metrics, the best epoch
    <run_dir>/results.json, results.md    the sweep's outcome (sma.finetune.results)
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sma.config import ConfigError, ModelConfig, TrainConfig, explicit_model_keys, to_yaml
from sma.data.builtin import MemoryStream
from sma.data.collate import Collate
from sma.data.epochs import EpochLoader, Plan
from sma.inputs import Batch, InputError
from sma.train.checkpointing import atomic_write_text
from sma.train.env import DistEnv
from sma.train.loop import Trainer
from sma.train.optim import batch_plan
from sma.train.rng import rng_state, set_rng_state

log = logging.getLogger(__name__)

TRIAL_FILE = "trial.json"
# Model keys a fine-tune may set itself: they change no parameter shape.
_FINETUNE_MODEL_KEYS = frozenset({"dropout", "activation_checkpointing"})


@dataclass
class Init:
    """Where the encoder comes from: the model to build, the input length, and the pretrained weights
    (None: from scratch)."""

    model: ModelConfig
    input_len: int
    weights: dict[str, torch.Tensor] | None
    source: str


def resolve_init(cfg: TrainConfig, explicit: dict[str, Any]) -> Init:
    """The model a fine-tune trains. With ``init=none`` it is the config's own ``model`` section; otherwise
    the checkpoint's, and a config key that contradicts it is refused naming the key (only a shorter
    ``max_len``, ``dropout`` and ``activation_checkpointing`` may differ)."""
    if not cfg.init:
        raise ConfigError("init: required: a run's checkpoints folder, one stepNNNNNNNN folder, an exported .pt, "
                          "or none (the config's model from scratch)")
    if cfg.init == "none":
        if not explicit:
            raise ConfigError("model: init=none trains the config's model from scratch, and the config has no model "
                              "section (state one, or `extends:` the pretraining recipe)")
        return Init(cfg.model, cfg.model.max_len, None, "none (from scratch)")
    from sma.checkpoint import load_pretrained_weights

    weights, saved = load_pretrained_weights(cfg.init)
    model = copy.deepcopy(saved.model)
    for key, value in explicit.items():
        if key in _FINETUNE_MODEL_KEYS:
            setattr(model, key, value)
        elif key == "max_len":
            if value > saved.model.max_len:
                raise ConfigError(f"model.max_len: {value} is longer than the checkpoint's position table "
                                  f"({saved.model.max_len} positions); use at most {saved.model.max_len}")
        elif key in saved.model.__dict__ and value != getattr(saved.model, key):
            raise ConfigError(f"model.{key}: the checkpoint's model has {getattr(saved.model, key)!r}, the config "
                              f"says {value!r}; a fine-tune takes the model from init= (remove model.{key}, or use "
                              "init=none to train the config's model from scratch)")
    return Init(model, int(explicit.get("max_len", model.max_len)), weights, str(cfg.init))


def check_task_fits(task: Any, init: Init) -> None:
    """The task's inputs must be what the model takes: modality, and for continuous tokens d_raw and n."""
    if task.modality != init.model.modality:
        raise ConfigError(f"task.name: {task.name} has {task.modality} inputs, but the model from init= takes "
                          f"model.modality={init.model.modality}")
    if task.modality == "continuous":
        n, d_raw = task.splits["train"].inputs[0].shape
        if d_raw != init.model.d_raw:
            raise ConfigError(f"model.d_raw: {task.name} has {d_raw} value(s) per token, the model takes "
                              f"{init.model.d_raw}")
        if n > init.input_len:
            raise ConfigError(f"model.max_len: {task.name} has {n} tokens per row, the model takes at most "
                              f"{init.input_len}")


class TargetScale:
    """Regression targets are trained standardized with the train split's statistics and reported in the
    label's own units; other kinds pass through."""

    def __init__(self, kind: str, train_targets: np.ndarray) -> None:
        self.active = kind == "regression"
        t = train_targets.astype(np.float64)
        self.mean = np.nanmean(t, axis=0) if self.active else 0.0
        std = np.nanstd(t, axis=0) if self.active else 1.0
        self.std = np.where(np.asarray(std) > 1e-12, std, 1.0)

    def to_model(self, targets: np.ndarray) -> np.ndarray:
        return ((targets - self.mean) / self.std).astype(np.float32) if self.active else targets

    def to_units(self, outputs: np.ndarray) -> np.ndarray:
        return outputs * self.std + self.mean if self.active else outputs


class SplitSamples(Sequence):
    """Rows of a task split as shard-style samples (``ids`` or ``x``, with ``y``) for the readers, made
    when read: a split of images is never held as float32 samples all at once."""

    def __init__(self, split: Any, scale: TargetScale) -> None:
        self.inputs, self.ys = split.inputs, scale.to_model(split.targets)
        self.key = "ids" if len(split.inputs) and split.inputs[0].dtype.kind == "i" else "x"

    def __len__(self) -> int:
        return len(self.ys)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        return {self.key: self.inputs[i], "y": self.ys[i]}


def trial_name(lr: float, seed: int) -> str:
    return f"lr{lr:g}-seed{seed}"


class Finetuner(Trainer):
    """One trial (one learning rate, one seed) of a fine-tune."""

    command = "finetune"

    def __init__(self, cfg: TrainConfig, env: DistEnv, task: Any, init: Init, steps_per_epoch: int) -> None:
        self.task, self.init, self.steps_per_epoch = task, init, steps_per_epoch
        self.scale = TargetScale(task.kind, task.splits["train"].targets)
        self.collate = Collate(init.input_len)
        self.history: list[dict[str, Any]] = []
        self.metric = task.metrics[0]
        super().__init__(cfg, env)
        if init.weights is not None and self.step == 0:  # a resumed trial continues from its own weights
            self._check_encoder_loaded()

    # -- model ------------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        from sma.model import build_finetune_model

        model = build_finetune_model(self.init.model, self.task.num_outputs, self.task.kind)
        if self.init.weights is not None:
            model.load_encoder_state_dict(self.init.weights)
        if self.cfg.finetune.mode == "linear_probe":
            model.backbone.requires_grad_(False)
        return model

    def _check_encoder_loaded(self) -> None:
        """The encoder starts as the checkpoint's: compared tensor by tensor (ZeRO-3 gathers its shards)."""
        import deepspeed

        module = self.engine.module.backbone
        params = list(module.parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=self.cfg.zero_stage == 3):
            state = module.state_dict()
            # in the module's dtype: under bf16/fp16 the engine holds the checkpoint's weights rounded
            differ = [k for k, v in state.items()
                      if not torch.equal(v.detach().cpu(), self.init.weights[f"backbone.{k}"].to(v.dtype))]
        if differ:
            raise RuntimeError(f"the encoder's weights differ from init={self.init.source} at {differ[:5]}")
        log.info("encoder initialized from %s: %d tensors, equal to the checkpoint's", self.init.source, len(state))

    def param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        return finetune_param_groups(model, self.cfg.optim.lr, self.cfg.optim.weight_decay,
                                     self.cfg.finetune.layer_decay)

    # -- data -------------------------------------------------------------------------------------
    def build_loader(self) -> Any:
        """Whole optimizer steps per epoch (the leftover rows of the seeded epoch order are left out of that
        epoch), each step the same global batch on any number of ranks."""
        micro, accum, world = self.cfg.data.micro_batch_size, self.engine.gradient_accumulation_steps(), \
            self.env.world_size
        samples = SplitSamples(self.task.splits["train"], self.scale)
        plan = Plan(self.steps_per_epoch * micro * accum * world, world, 1, micro)
        stream = MemoryStream(samples, plan, self.env.rank, self.collate, self.cfg.seed, shuffle=True,
                              step_share=micro * accum)
        return EpochLoader(stream, 0, True, f"task:{self.task.name}:train")

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        outputs = self.engine(batch)
        return self.engine.module.loss(outputs, batch.targets), {}

    # -- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, split: str) -> np.ndarray:
        """Model outputs (N, C) for every row of ``split``, in order, in the label's units. Each rank takes
        rows ``rank::world_size``; every rank runs the same number of batches (ZeRO-3 gathers parameters
        collectively), padding with its last row."""
        rows = self.task.splits[split]
        world, rank = self.env.world_size, self.env.rank
        mine = list(range(rank, len(rows), world)) or [0]
        size = self.cfg.finetune.eval_batch_size or self.cfg.data.micro_batch_size
        batches = math.ceil(math.ceil(len(rows) / world) / size)
        mine += [mine[-1]] * (batches * size - len(mine))
        samples = SplitSamples(rows.take(mine), self.scale)
        outs = []
        for b in range(batches):
            batch = self.collate(samples[b * size:(b + 1) * size]).to(self.env.device)
            outs.append(self.engine(batch).float().cpu().numpy())
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, (mine, np.concatenate(outs)))
        result = np.zeros((len(rows), self.task.num_outputs), dtype=np.float64)
        for idx, out in gathered:
            result[idx] = out[: len(idx)]  # padding rows repeat a real row: writing them again is harmless
        return self.scale.to_units(result)

    def evaluate(self) -> dict[str, float]:
        from sma.finetune.metrics import MetricError, compute

        saved = rng_state()
        self.engine.eval()
        out: dict[str, float] = {}
        try:
            for split in ("valid", "test"):
                outputs = self.predict(split)
                figures = compute(self.task.metrics, self.task.kind, outputs, self.task.splits[split].targets,
                                  where=f"{self.task.name} {split} split")
                out.update({f"{split}_{k}": float(v) for k, v in figures.items()})
        except MetricError as e:
            raise InputError(str(e)) from None
        finally:
            self.engine.train()
            set_rng_state(saved)
        return out

    def after_step(self, record: dict[str, Any]) -> bool:
        if self.step % self.steps_per_epoch:
            return False
        epoch = self.step // self.steps_per_epoch
        figures = self.evaluate()
        record.update({"epoch": epoch, **{f"eval_{k}": v for k, v in figures.items()}})
        self.history.append({"epoch": epoch, "step": self.step, **figures})
        best = self.best()
        log.info("epoch %d: %s (best epoch %d: valid %s %.4f)", epoch,
                 ", ".join(f"{k} {v:.4f}" for k, v in figures.items()), best["epoch"], self.metric,
                 best[f"valid_{self.metric}"])
        return self.finished()

    def best(self) -> dict[str, Any]:
        return best_epoch(self.history, self.metric)

    def finished(self) -> bool:
        return should_stop(self.history, self.metric, self.cfg.finetune.patience)

    def extra_state(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))

    def result(self) -> dict[str, Any]:
        return {"lr": self.cfg.optim.lr, "seed": self.cfg.seed, "epochs_run": len(self.history),
                "early_stopped": self.finished(), "best_epoch": self.best()["epoch"], "best": self.best(),
                "history": self.history}


def best_epoch(history: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The epoch record with the best validation ``metric`` (the earliest among ties)."""
    from sma.finetune.metrics import higher_is_better

    sign = 1.0 if higher_is_better(metric) else -1.0
    return max(history, key=lambda h: (sign * h[f"valid_{metric}"], -h["epoch"]))


def should_stop(history: list[dict[str, Any]], metric: str, patience: int) -> bool:
    """Early stopping: ``patience`` epochs have passed since the best one (never with patience 0)."""
    return bool(patience and history and history[-1]["epoch"] - best_epoch(history, metric)["epoch"] >= patience)


def finetune_param_groups(model: torch.nn.Module, lr: float, weight_decay: float,
                          layer_decay: float) -> list[dict[str, Any]]:
    """AdamW groups by (weight decay, layer depth) over the trainable parameters: matrices decay, vectors
    do not; a block ``d`` levels below the head gets ``lr * layer_decay ** d`` (1.0: the same lr for all).
    Frozen parameters (a linear probe's encoder) are left out."""
    depths = model.layer_depths()
    top = max(depths.values())
    groups: dict[tuple[bool, int], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (p.ndim >= 2, depths[name])
            groups.setdefault(key, {"params": [], "weight_decay": weight_decay if key[0] else 0.0,
                                    "lr": lr * layer_decay ** (top - key[1])})["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def trial_config(cfg: TrainConfig, init: Init, lr: float, seed: int, steps_per_epoch: int) -> TrainConfig:
    trial = copy.deepcopy(cfg)
    trial.model = copy.deepcopy(init.model)
    trial.optim.lr, trial.seed = lr, seed
    trial.run_dir = str(Path(cfg.run_dir) / trial_name(lr, seed))
    trial.max_steps = cfg.finetune.epochs * steps_per_epoch
    trial.checkpoint_every = steps_per_epoch  # every epoch: a preempted trial loses at most one
    trial.eval_every = 0
    return trial


def steps_per_epoch(cfg: TrainConfig, train_rows: int, world_size: int) -> int:
    micro, accum = batch_plan(cfg, world_size)
    batches = train_rows // (world_size * micro)
    if batches < accum:
        raise ConfigError(f"optim.global_batch_size: the train split has {train_rows} rows, fewer than one step of "
                          f"{micro * accum * world_size}; use a smaller batch")
    return batches // accum


def finetune(cfg: TrainConfig, env: DistEnv, args: argparse.Namespace) -> int:
    """``train/finetune.py``: every (lr, seed) trial in turn, then the results table. Finished trials are
    kept on ``resume=auto``; a preempted trial continues from its last checkpoint."""
    from sma.finetune.results import summarize, write_results
    from sma.finetune.tasks import load_task

    init = resolve_init(cfg, explicit_model_keys(args.config, args.overrides))
    task = load_task(cfg.task, init.input_len)
    check_task_fits(task, init)
    if env.is_main:
        log.info("task %s; init %s; %s", task.summary(), init.source, cfg.finetune.mode)
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.run_dir) / "config.yaml").write_text(to_yaml(cfg))
    spe = steps_per_epoch(cfg, len(task.splits["train"]), env.world_size)
    trials = []
    for lr in cfg.finetune.lrs or [cfg.optim.lr]:
        for seed in cfg.finetune.seeds or [cfg.seed]:
            trial_cfg = trial_config(cfg, init, lr, seed, spe)
            done = Path(trial_cfg.run_dir) / TRIAL_FILE
            if done.is_file() and cfg.resume:
                trials.append(json.loads(done.read_text()))
                log.info("trial %s already finished", trial_name(lr, seed))
                continue
            trainer = Finetuner(trial_cfg, env, task, init, spe)
            code = trainer.run()
            if code:
                return code
            result = trainer.result()
            if env.is_main:
                atomic_write_text(done, json.dumps(result, indent=1))
            trials.append(result)
    if env.is_main:
        results = summarize(cfg, task, init.source, trials)
        write_results(Path(cfg.run_dir), results)
        print(results["table"], flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from sma.train.launch import launch

    return launch(argv, "finetune", finetune,
                  "SMA fine-tuning and evaluation with DeepSpeed: `python train/finetune.py --config "
                  "configs/finetune/X.yaml init=CHECKPOINT|none [key=value ...]` (or under deepspeed / torchrun).",
                  require_model=False)
