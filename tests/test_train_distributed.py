"""Pretraining as real 2-rank DeepSpeed jobs on CPU (gloo): ZeRO stages, sharded checkpoints, export,
exact resume after a crash mid-save, and preemption with resume on a different world size."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import psutil
import pytest
import torch

from sma.checkpoint import FORMAT, load_pretrained, read_consolidated
from sma.export import export
from sma.train.metrics import read_metrics
from sma.train.preemption import PREEMPTED_EXIT_CODE
from sma.train.schedule import lr_ratio
from helpers_train import TINY_RUN, assert_fp32_masters_of, run, start

pytestmark = pytest.mark.slow

# stage -> (launcher, extra overrides): every stage through the deepspeed launcher, together covering fp32
# and bf16, activation checkpointing and wandb (torchrun is covered by the resume test below).
STAGES = {
    1: ("deepspeed", ["precision=fp32", "wandb_mode=offline"]),
    2: ("deepspeed", ["precision=bf16"]),
    3: ("deepspeed", ["precision=fp32", "model.activation_checkpointing=true"]),
}


@pytest.fixture(scope="session")
def zero_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """``zero_run(stage)``: the run directory of a finished 2-rank tiny run at that ZeRO stage."""
    root = tmp_path_factory.mktemp("zero")

    @cache
    def make(stage: int) -> Path:
        launcher, extra = STAGES[stage]
        run_dir = root / f"stage{stage}"
        run(2, [f"run_dir={run_dir}", f"zero_stage={stage}", *TINY_RUN, *extra], launcher=launcher)
        return run_dir

    return make


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_run_lowers_loss_and_saves_sharded_checkpoints(zero_run: Callable[[int], Path],
                                                                   stage: int) -> None:
    run_dir = zero_run(stage)
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, 25))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "selection_share", "masked_ratio"):
        assert all(math.isfinite(r[key]) for r in records), key
    first, last = [r["loss"] for r in records[:4]], [r["loss"] for r in records[-4:]]
    assert sum(last) / 4 < sum(first) / 4 - 0.3, (first, last)
    assert all(abs(r["masked_ratio"] - 0.15) < 0.02 for r in records)
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == 2 and all(math.isfinite(e) for e in evals)

    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text() == "step00000024"
    kept = sorted(p.name for p in ckpts.iterdir() if p.is_dir())
    assert kept == ["step00000016", "step00000024"]  # keep_last=2 removed step 8
    names = {p.name for p in (ckpts / "step00000024").iterdir()}
    for rank in (0, 1):
        assert any(f"zero_pp_rank_{rank}_" in n and n.endswith("optim_states.pt") for n in names), names
        assert f"trainer_rank{rank:05d}.pt" in names
    if stage == 3:  # parameters are partitioned too
        assert {"zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"} <= names
    assert (run_dir / "config.yaml").is_file() and "config.yaml" in names
    if stage == 1:
        assert list((run_dir / "wandb").glob("offline-run-*")), "wandb offline run missing"


def test_zero3_export_matches_zero1_run_and_loads_without_deepspeed(zero_run: Callable[[int], Path],
                                                                    tmp_path: Path) -> None:
    z1, z3 = zero_run(1), zero_run(3)
    l1, l3 = losses(z1), losses(z3)
    # Same run but for the ZeRO stage and activation checkpointing (stage 3): the same losses.
    assert all(math.isclose(l1[s], l3[s], rel_tol=1e-4) for s in l1), "ZeRO-1 and ZeRO-3 diverged"
    w1 = read_consolidated(export(z1 / "checkpoints", tmp_path / "z1.pt"))
    w3 = read_consolidated(export(z3 / "checkpoints" / "step00000016", tmp_path / "z3_16.pt"))
    w3_last = read_consolidated(export(z3 / "checkpoints", tmp_path / "z3.pt"))
    assert w1["format"] == FORMAT and w1["step"] == 24 and w3["step"] == 16
    assert w1["model"].keys() == w3_last["model"].keys()
    for k, v in w1["model"].items():
        torch.testing.assert_close(w3_last["model"][k], v, rtol=1e-3, atol=1e-5, msg=k)
    model, cfg = load_pretrained(tmp_path / "z3.pt")
    assert cfg.zero_stage == 3 and cfg.max_steps == 24
    for k, v in model.state_dict().items():
        assert torch.equal(v, w3_last["model"][k]), k


def test_deepspeed_fused_adamw_under_torchrun_follows_the_torch_adamw_run(zero_run: Callable[[int], Path],
                                                                         tmp_path: Path) -> None:
    # DeepSpeed's own optimizer (built from the DeepSpeed config: FusedAdam in AdamW mode, its C++ op
    # compiled on first use) must do what torch.optim.AdamW does, decoupled weight decay included.
    run_dir = tmp_path / "fused"
    run(2, [f"run_dir={run_dir}", "zero_stage=1", *TINY_RUN, "precision=fp32", "optim.optimizer=deepspeed_adamw"],
        launcher="torchrun")
    assert "FusedAdam" in (run_dir.with_name("fused.log")).read_text()
    torch_run, fused = losses(zero_run(1)), losses(run_dir)
    assert fused.keys() == torch_run.keys()
    assert all(math.isclose(torch_run[s], fused[s], rel_tol=1e-4) for s in fused), (torch_run, fused)


def test_kill_during_save_keeps_previous_latest_and_resume_reproduces_losses(
        zero_run: Callable[[int], Path], tmp_path: Path) -> None:
    reference = losses(zero_run(1))  # uninterrupted, same settings
    run_dir = tmp_path / "killed"
    args = [f"run_dir={run_dir}", "zero_stage=1", "precision=fp32", *TINY_RUN]
    job = run(2, args, expect=None, env={"SMA_KILL_DURING_SAVE_AT_STEP": "16"})
    assert job.proc.returncode != 0
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text() == "step00000008"
    assert (ckpts / "step00000016").is_dir() and not (ckpts / "step00000016" / "meta.json").exists()

    run(2, [*args, "resume=auto"], launcher="torchrun")  # a run started by one launcher resumes under the other
    resumed = losses(run_dir)
    assert sorted(resumed) == list(range(1, 25))  # steps 9..16 logged once, not twice
    assert [resumed[s] for s in range(9, 25)] == [reference[s] for s in range(9, 25)]
    evals = {r["step"]: r["eval_loss"] for r in read_metrics(run_dir) if "eval_loss" in r}
    assert evals == {r["step"]: r["eval_loss"] for r in read_metrics(zero_run(1)) if "eval_loss" in r}
    assert (ckpts / "step00000016" / "meta.json").is_file()  # the crashed save was redone


def _worker(job_pid: int, local_rank: int) -> psutil.Process:
    for p in psutil.Process(job_pid).children(recursive=True):
        if f"--local_rank={local_rank}" in " ".join(p.cmdline()):
            return p
    raise AssertionError(f"no rank {local_rank} under {job_pid}")


def test_preempted_two_rank_run_saves_and_resumes_on_one_rank(tmp_path: Path) -> None:
    run_dir = tmp_path / "preempt"
    total = 160  # the signal lands near step 15: many seconds before the end, even on a busy machine
    # The global batch (16) is the recipe: 1 micro-batch of 8 on each of 2 ranks, then 2 of 8 on one rank.
    args = [f"run_dir={run_dir}", "zero_stage=2", f"max_steps={total}", "checkpoint_every=0", "log_every=1",
            "optim.global_batch_size=16", "wandb_mode=disabled", "optim.warmup_steps=5"]
    job = start(2, args)
    deadline = time.monotonic() + 240
    metrics = run_dir / "metrics.jsonl"
    while not metrics.is_file() or metrics.read_text().count("\n") < 15:  # well into training
        assert job.proc.poll() is None and time.monotonic() < deadline, job.output()[-4000:]
        time.sleep(0.05)
    os.kill(_worker(job.proc.pid, 1).pid, signal.SIGUSR1)  # one rank signalled: all must stop together
    assert job.wait() == PREEMPTED_EXIT_CODE, job.output()[-4000:]
    before = read_metrics(run_dir)
    stopped = before[-1]["step"]
    assert stopped < total
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step{stopped:08d}"
    assert "2 rank(s), ZeRO stage 2, fp32, optimizer AdamW" in job.output()
    assert "1 micro-batch(es) of 8 per rank" in job.output()

    resumed_job = run(1, [*args, "resume=auto"])
    assert "2 micro-batch(es) of 8 per rank" in resumed_job.output()
    after = read_metrics(run_dir)
    assert [r["step"] for r in after] == list(range(1, total + 1))
    resumed = after[stopped]
    # The schedule continues from the restored step, and the weights are the trained ones, not a fresh init.
    assert math.isclose(resumed["lr"], 1e-3 * lr_ratio(stopped, 5, total, 0.1), rel_tol=1e-6)
    assert resumed["loss"] < before[0]["loss"] - 0.3
    assert all(math.isfinite(r["loss"]) for r in after)


def test_export_of_a_bf16_run_without_zero_keeps_the_fp32_master_weights(tmp_path: Path) -> None:
    run_dir = tmp_path / "bf16"
    run(1, [f"run_dir={run_dir}", "zero_stage=0", "precision=bf16", "max_steps=6", "wandb_mode=disabled"])
    tag = run_dir / "checkpoints" / "step00000006"
    exported = read_consolidated(export(run_dir / "checkpoints", tmp_path / "bf16.pt"))["model"]
    assert_fp32_masters_of(tag, exported)
    # a checkpoint of an older version names no groups: a pretraining run's are rebuilt
    meta = json.loads((tag / "meta.json").read_text())
    del meta["optimizer_params"]
    (tag / "meta.json").write_text(json.dumps(meta))
    assert_fp32_masters_of(tag, read_consolidated(export(tag, tmp_path / "older.pt"))["model"])
