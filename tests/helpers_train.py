"""Launching ``train/pretrain.py`` as real multi-process DeepSpeed jobs from tests, and cleaning up what
the launchers leave behind (DeepSpeed's shared-memory allreduce buffers)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sma.train.env import free_port

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "train" / "pretrain.py"
FINETUNE = REPO / "train" / "finetune.py"
TINY = str(REPO / "configs" / "tiny_text.yaml")
# Short, checkpointed and logged every step: what the multi-process tests compare.
TINY_RUN = ["max_steps=24", "checkpoint_every=8", "keep_last=2", "log_every=1", "eval_every=12",
            "eval_batches=2", "wandb_mode=disabled"]


@dataclass
class Job:
    """A running launcher; ``wait()`` returns its exit code and removes the shared-memory buffers."""

    proc: subprocess.Popen
    port: int
    log: Path

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            # DeepSpeed's CPU allreduce buffers are named after the rendezvous port: remove ours only.
            for f in glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{self.port}_*"):
                os.remove(f)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start(nprocs: int, overrides: list[str], *, launcher: str = "deepspeed", config: str = TINY,
          env: dict[str, str] | None = None, preexec_fn=None, script: Path = PRETRAIN) -> Job:
    """Start ``nprocs`` ranks of ``script`` (pretraining, or ``FINETUNE``) with ``launcher`` (deepspeed |
    torchrun); ``preexec_fn`` runs in the launcher's process before it starts (limits set there apply to
    every rank)."""
    port = free_port()
    if launcher == "deepspeed":
        cmd = ["deepspeed", "--num_gpus", str(nprocs), "--master_port", str(port)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nprocs),
               "--master_addr", "127.0.0.1", "--master_port", str(port)]
    cmd += [str(script), "--config", config, *overrides]
    run_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("run_dir="))
    log = Path(run_dir).with_name(Path(run_dir).name + ".log")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("WANDB_MODE", None)
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=preexec_fn)
    return Job(proc, port, log)


def run(nprocs: int, overrides: list[str], **kw) -> Job:
    """Start and wait; fails the test with the job's output unless it exits with ``expect`` (0; None:
    any code)."""
    expect = kw.pop("expect", 0)
    job = start(nprocs, overrides, **kw)
    code = job.wait()
    if expect is not None:
        assert code == expect, f"exit code {code}, expected {expect}; output:\n{job.output()[-6000:]}"
    return job


def assert_fp32_masters_of(tag_dir: Path, weights: dict) -> None:
    """``weights`` (loaded from the checkpoint ``tag_dir`` of a bf16 run without ZeRO) are DeepSpeed's fp32
    master weights: every tensor of the saved bf16 model, in fp32, rounding to the bf16 one, and most of
    them finer than bf16."""
    import torch

    bf16 = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    assert weights.keys() == bf16.keys()
    finer = 0
    for k, v in bf16.items():
        assert weights[k].dtype == torch.float32 or not v.is_floating_point(), k
        assert torch.equal(weights[k].to(v.dtype), v), k  # the masters round to the training weights
        finer += int(not torch.equal(weights[k], v.float()))
    assert finer > len(bf16) // 2  # and most carry more precision than bf16
