"""Command line of ``train/pretrain.py``: parse, set up the process, train, exit with the right code."""

from __future__ import annotations

import argparse
import logging
import sys

from sma.config import ConfigError, load_config
from sma.inputs import InputError
from sma.train.env import init_distributed, prepare_environment, shutdown

log = logging.getLogger("sma.train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="SMA pretraining with DeepSpeed. Launch with `deepspeed [--num_gpus N] train/pretrain.py "
                    "--config X.yaml [key=value ...]` or `torchrun --nproc_per_node N ...`.")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    # The deepspeed launcher appends --local_rank; the process reads LOCAL_RANK from the environment.
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_steps=100 zero_stage=2")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Returns 0 when training completes, 124 when preempted (checkpoint saved), 2 on a bad config, 3 when
    the data cannot be read (missing or unfinished shards, a damaged shard, a sample the model cannot take)."""
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    prepare_environment()
    env = init_distributed()
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING,
                        format=f"%(asctime)s [rank {env.rank}] %(name)s: %(message)s")
    from sma.train.loop import Pretrainer  # after prepare_environment: deepspeed picks its accelerator at import
    from sma.train.checkpointing import CheckpointWriteError
    from sma.train.rundir import hold_run_dir

    try:
        with hold_run_dir(cfg.run_dir, env, "pretrain"):
            trainer = Pretrainer(cfg, env)
            code = trainer.run()
            if code == 0 and env.is_main:
                print(trainer.summary(), flush=True)
    except ConfigError as e:  # settings that only fail once the world size is known
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
