"""Command lines of ``train/pretrain.py`` and ``train/finetune.py``: parse, set up the process, hold the
run directory, run the job, exit with the right code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from sma.config import ConfigError, TrainConfig, load_config
from sma.inputs import InputError
from sma.train.env import DistEnv, init_distributed, prepare_environment, shutdown

log = logging.getLogger("sma.train")

EXIT_CODES = ("0 done, 124 preempted by SIGUSR1/SIGTERM after saving a checkpoint (requeue and resume=auto), "
              "2 bad config (also: run dir in use, model differs from the checkpoint's, a checkpoint could not be "
              "written), 3 data that cannot be read (the message names the file or shard)")


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description, epilog=f"Exit codes: {EXIT_CODES}.")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    # The deepspeed launcher appends --local_rank; the process reads LOCAL_RANK from the environment.
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_steps=100 zero_stage=2")
    return p.parse_args(argv)


def launch(argv: list[str] | None, command: str, job: Callable[[TrainConfig, DistEnv, argparse.Namespace], int],
           description: str,
           require_model: bool = True) -> int:
    """Load the config, join the process group, hold ``run_dir`` and run ``job``; returns the exit code."""
    args = parse_args(argv, description)
    try:
        cfg = load_config(args.config, args.overrides, require_model=require_model)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    prepare_environment()
    env = init_distributed()
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING,
                        format=f"%(asctime)s [rank {env.rank}] %(name)s: %(message)s")
    # after prepare_environment: deepspeed picks its accelerator at import
    from sma.train.checkpointing import CheckpointWriteError
    from sma.train.rundir import hold_run_dir

    try:
        with hold_run_dir(cfg.run_dir, env, command):
            code = job(cfg, env, args)
    except ConfigError as e:  # settings that only fail once the world size or the checkpoint is known
        print(f"config error: {e}", file=sys.stderr)
        code = 2
    except InputError as e:  # names the file, shard or sample; a traceback would only bury that
        print(f"data error (rank {env.rank}): {e}", file=sys.stderr)
        code = 3
    except CheckpointWriteError as e:
        print(f"checkpoint error (rank {env.rank}): {e}", file=sys.stderr)
        code = 2
    shutdown()
    return code


def pretrain(cfg: TrainConfig, env: DistEnv, args: argparse.Namespace) -> int:
    from sma.train.loop import Pretrainer

    trainer = Pretrainer(cfg, env)
    code = trainer.run()
    if code == 0 and env.is_main:
        print(trainer.summary(), flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """``train/pretrain.py``."""
    return launch(argv, "pretrain", pretrain,
                  "SMA pretraining with DeepSpeed. Launch with `deepspeed [--num_gpus N] train/pretrain.py "
                  "--config X.yaml [key=value ...]` or `torchrun --nproc_per_node N ...`.")
