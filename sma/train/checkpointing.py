"""Checkpoints: DeepSpeed's sharded ZeRO checkpoint plus each rank's trainer state, an atomic ``latest``
pointer, keep-last-K pruning, and resume lookup (same or different world size).

Layout under ``<run_dir>/checkpoints/``::

    latest                              tag of the newest complete checkpoint (replaced atomically)
    step00000200/                       one tag per save
        mp_rank_00_model_states.pt      DeepSpeed (stage 3: one per rank)
        *zero_pp_rank_<r>_*optim_states.pt  DeepSpeed, one per rank (ZeRO 1-3, bf16)
        trainer_rank<r>.pt              step, data-reader position and RNG states of rank r
        config.yaml                     the resolved run config
        meta.json                       written last, by rank 0, once every rank has finished: the
                                        completion mark (a crash mid-save leaves none, and no ``latest``);
                                        step, world size, ZeRO stage, the parameter names of each
                                        optimizer group
    step00000200.universal/             made on demand to resume on a different world size
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sma.config import ConfigError, TrainConfig
from sma.train.env import DistEnv
from sma.train.schedule import lr_ratio

log = logging.getLogger(__name__)

LATEST = "latest"
META = "meta.json"
_TAG = re.compile(r"^step(\d{8})$")
# Fault injection for the crash-during-save test: the process kills itself after its shards are written
# and before the checkpoint is marked complete, exactly like a node lost mid-save.
_KILL_IN_SAVE_ENV = "SMA_KILL_DURING_SAVE_AT_STEP"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary name next to ``path``, then rename it to ``path``: a reader never sees
    a half-written file, and a crash leaves only the ``.tmp``."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def is_complete(tag_dir: Path) -> bool:
    return (tag_dir / META).is_file()


def read_meta(tag_dir: Path) -> dict[str, Any]:
    return json.loads((tag_dir / META).read_text())


def complete_tags(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _TAG.match(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: p.name)


def find_checkpoint(resume: str, root: Path) -> Path | None:
    """The tag directory to resume from. ``resume``: "" (none; refused if ``root`` holds one), "auto"
    (newest complete one under ``root``, or None on a fresh run), or a path to a checkpoints folder or to
    one tag folder."""
    if not resume:
        existing = complete_tags(root)
        if existing:  # starting over would overwrite its metrics and, in time, its checkpoints
            raise ConfigError(
                f"resume: {root} already holds a checkpoint ({existing[-1].name}); pass resume=auto to continue "
                f"that run, or a new run_dir (or delete that one) to start over")
        return None
    if resume == "auto":
        latest = root / LATEST
        if latest.is_file():
            tag_dir = root / latest.read_text().strip()
            if is_complete(tag_dir):
                return tag_dir
            log.warning("%s points to %s, which is incomplete; using the newest complete one", latest, tag_dir)
        tags = complete_tags(root)
        return tags[-1] if tags else None
    try:
        return resolve_checkpoint(Path(resume))
    except FileNotFoundError as e:
        raise ConfigError(f"resume: {e}") from None


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoints folder (meaning its ``latest``) or one tag folder -> that complete tag folder.
    Raises ``FileNotFoundError`` for anything else, including a checkpoint whose save never finished."""
    tag_dir = path / (path / LATEST).read_text().strip() if (path / LATEST).is_file() else path
    if not is_complete(tag_dir):
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {META} in {tag_dir})")
    return tag_dir


# Model keys that a resumed run may change: they alter no parameter shape.
class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the previous one is intact. The message says which."""


_RESUMABLE_MODEL_CHANGES = frozenset({"dropout", "activation_checkpointing"})


def saved_config(tag_dir: Path) -> dict[str, Any]:
    """The resolved config a checkpoint was saved with (as a plain dict)."""
    import yaml

    return yaml.safe_load((tag_dir / "config.yaml").read_text()) or {}


def check_resume(cfg: TrainConfig, tag_dir: Path) -> None:
    """Refuse a resume whose model differs from the checkpoint's (naming each differing key with the
    checkpoint's value), and warn when ``max_steps`` changed (it reshapes the learning-rate schedule)."""
    saved = saved_config(tag_dir)
    saved_model = saved.get("model", {})
    differ = [f"model.{k}: checkpoint {saved_model[k]!r}, this run {getattr(cfg.model, k)!r}"
              for k in sorted(saved_model) if hasattr(cfg.model, k) and k not in _RESUMABLE_MODEL_CHANGES
              and saved_model[k] != getattr(cfg.model, k)]
    if differ:
        raise ConfigError(f"resume: {tag_dir} holds another model ({'; '.join(differ)}); resume with the "
                          "checkpoint's model settings, or start a new run_dir (fine-tuning starts from it with init=)")
    saved_max = saved.get("max_steps", cfg.max_steps)
    if saved_max != cfg.max_steps:
        step = read_meta(tag_dir)["step"]
        saved_optim = saved.get("optim", {})
        before = saved_optim.get("lr", cfg.optim.lr) * lr_ratio(
            step, saved_optim.get("warmup_steps", cfg.optim.warmup_steps), saved_max,
            saved_optim.get("min_lr_ratio", cfg.optim.min_lr_ratio))
        after = cfg.optim.lr * lr_ratio(step, cfg.optim.warmup_steps, cfg.max_steps, cfg.optim.min_lr_ratio)
        log.warning("max_steps changed from %d (checkpoint) to %d: the cosine schedule is recomputed over %d steps, "
                    "so the learning rate at step %d moves from %.3g to %.3g (see README: Extending a run)",
                    saved_max, cfg.max_steps, cfg.max_steps, step, before, after)


class CheckpointManager:
    """Saves and restores training state under ``root`` on every rank; keeps the newest ``keep_last``."""

    def __init__(self, root: Path, keep_last: int, env: DistEnv) -> None:
        self.root = root
        self.keep_last = keep_last
        self.env = env

    def save(self, engine: Any, step: int, trainer_state: dict[str, Any], config_yaml: str,
             optimizer_params: list[list[str]]) -> Path:
        """Write checkpoint ``step`` on all ranks (a collective: every rank must call it).
        ``optimizer_params``: the names of the parameters in each optimizer group, in order (meta.json).

        A write that fails on any rank (a full disk, a quota) fails the save on every rank with
        ``CheckpointWriteError``: the partial folder is removed and ``latest`` still names the previous
        complete checkpoint."""
        tag = tag_for(step)
        tag_dir = self.root / tag
        if self.env.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            if tag_dir.exists():  # debris of a save that crashed before completing
                shutil.rmtree(tag_dir)
        torch.distributed.barrier()
        error = self._attempt(lambda: self._write_shards(engine, tag, tag_dir, step, trainer_state))
        if os.environ.get(_KILL_IN_SAVE_ENV) == str(step):
            os.kill(os.getpid(), 9)
        # every rank's files are on disk past this point (or some rank failed)
        if not self._failed_anywhere(error) and self.env.is_main:
            error = self._attempt(lambda: self._complete(engine, tag, tag_dir, step, config_yaml, optimizer_params))
        if self._failed_anywhere(error):
            previous = (self.root / LATEST).read_text().strip() if (self.root / LATEST).is_file() else None
            if self.env.is_main:
                shutil.rmtree(tag_dir, ignore_errors=True)
            torch.distributed.barrier()
            raise CheckpointWriteError(
                f"could not write checkpoint {tag_dir}: {error or 'a write failed on another rank'} (is the disk "
                f"full?); {f'the previous checkpoint {previous} is kept' if previous else 'no earlier checkpoint'}; "
                "free space, then continue with resume=auto")
        return tag_dir

    @staticmethod
    def _attempt(write: Any) -> Exception | None:
        # torch.save reports a short write (ENOSPC, EFBIG, a quota) as a RuntimeError from its zip writer
        try:
            write()
        except (OSError, RuntimeError) as e:
            return e
        return None

    def _failed_anywhere(self, error: Exception | None) -> bool:
        flag = torch.tensor([float(error is not None)], device=self.env.device)
        torch.distributed.all_reduce(flag)
        return bool(flag.item())

    def _write_shards(self, engine: Any, tag: str, tag_dir: Path, step: int, trainer_state: dict[str, Any]) -> None:
        engine.save_checkpoint(str(self.root), tag=tag, client_state={"step": step}, save_latest=False)
        atomic_torch_save(trainer_state, tag_dir / f"trainer_rank{self.env.rank:05d}.pt")

    def _complete(self, engine: Any, tag: str, tag_dir: Path, step: int, config_yaml: str,
                  optimizer_params: list[list[str]]) -> None:
        """Rank 0, once every rank's shards are written: the config, the completion mark, ``latest``."""
        (tag_dir / "config.yaml").write_text(config_yaml)
        meta = {"step": step, "world_size": self.env.world_size, "zero_stage": engine.zero_optimization_stage(),
                "optimizer_params": optimizer_params}
        atomic_write_text(tag_dir / META, json.dumps(meta))
        atomic_write_text(self.root / LATEST, tag)
        self._prune()

    def _prune(self) -> None:
        keep = {p.name for p in complete_tags(self.root)[-self.keep_last:]}
        for p in self.root.iterdir():
            m = re.match(r"^(step\d{8})(\.universal)?$", p.name)
            if m and m.group(1) not in keep and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                log.info("removed old checkpoint %s", p)

    def needs_universal(self, tag_dir: Path, zero_stage: int) -> bool:
        """A checkpoint with per-rank optimizer partitions, saved on another world size, is loaded
        through DeepSpeed's universal format, which re-partitions it. The ZeRO stage must not change:
        DeepSpeed cannot load one stage's layout into another."""
        meta = read_meta(tag_dir)
        if meta["zero_stage"] != zero_stage:
            raise ConfigError(
                f"zero_stage: {tag_dir} was saved with ZeRO stage {meta['zero_stage']}; resume it with "
                f"zero_stage={meta['zero_stage']} (any number of ranks); its weights alone can be exported with "
                "`python -m sma.export`"
            )
        sharded = any(tag_dir.glob("*optim_states.pt"))
        return sharded and meta["world_size"] != self.env.world_size

    def to_universal(self, tag_dir: Path) -> Path:
        """Convert ``tag_dir`` to DeepSpeed's universal checkpoint (rank 0 converts, the rest wait)."""
        out = tag_dir.with_name(tag_dir.name + ".universal")
        if self.env.is_main and not (out / META).is_file():
            from argparse import Namespace

            from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

            shutil.rmtree(out, ignore_errors=True)
            log.info("converting %s to a universal checkpoint for world size %d", tag_dir, self.env.world_size)
            ds_to_universal(Namespace(input_folder=str(tag_dir), output_folder=str(out), num_extract_workers=1,
                                      num_merge_workers=1, keep_temp_folder=False, strict=True,
                                      inject_missing_state=True))
            shutil.copy(tag_dir / META, out / META)
        torch.distributed.barrier()
        return out

    def load(self, engine: Any, tag_dir: Path) -> dict[str, Any]:
        """Restore DeepSpeed state from ``tag_dir`` and return this rank's trainer state.

        On a different world size rank r takes the state of saved rank ``r % saved_world_size``; the
        caller decides what of it (the data position) still applies.
        """
        engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        saved_world = read_meta(tag_dir)["world_size"]
        source = tag_dir.with_name(tag_dir.name.removesuffix(".universal"))
        state_file = source / f"trainer_rank{self.env.rank % saved_world:05d}.pt"
        state: dict[str, Any] = torch.load(state_file, map_location="cpu", weights_only=False)
        return state
