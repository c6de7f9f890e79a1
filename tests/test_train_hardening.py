"""A run owns its run directory; bad configs, a full disk and a changed model end in one line, not a
traceback; evaluation reports a loss under fixed random masks; a finished run says what it left."""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sma.cli import params_main
from sma.config import ConfigError, load_config, to_yaml
from sma.model import build_pretrain_model
from sma.train.checkpointing import LATEST, META, check_resume, tag_for
from sma.train.rundir import RunDirBusy, RunDirLock
from helpers_model import TEXT_MASKING, text_batch, tiny_perceiver
from helpers_train import TINY, run, start

REPO = Path(__file__).resolve().parents[1]


# -- configs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "# only a comment\n", "data:\n  format: builtin\n", "model: {}\n"])
def test_a_config_without_a_model_section_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"^model: .*c\.yaml has no model section"):
        load_config(path)


def test_a_recipe_extension_without_its_own_model_section_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(f"extends: {TINY}\nmax_steps: 3\n")
    assert load_config(tmp_path / "c.yaml").model.d_embed == 64


def test_yaml_syntax_errors_name_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  max_len: 128\n  d_embed: [64\nmax_steps: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml, line 4, column 10: YAML syntax error: did not find expected .,. or .\]."):
        load_config(path)


@pytest.mark.parametrize("text, found", [("- model\n- data\n", "a list"), ("42\n", "int")])
def test_a_top_level_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str, found: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"top level must be a mapping .*got {found}"):
        load_config(path)


def test_override_errors_are_blamed_on_the_command_line() -> None:
    with pytest.raises(ConfigError, match=r"^max_steps: .*\(command-line override 'max_steps=ten'\)$"):
        load_config(TINY, ["max_steps=ten"])
    with pytest.raises(ConfigError, match=r"^model\.nope: .*\(command-line override 'model.nope=1'\)$"):
        load_config(TINY, ["model.nope=1"])
    with pytest.raises(ConfigError, match=r"^max_steps: .*\(in .*bad\.yaml\)$"):
        bad = Path(TINY).with_name("bad.yaml")
        try:
            bad.write_text(f"extends: {Path(TINY).name}\nmax_steps: ten\n")
            load_config(bad)
        finally:
            bad.unlink()


def test_sma_params_on_a_missing_file_is_one_line_and_exit_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        params_main(["/no/such/config.yaml"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "config error: config file not found: /no/such/config.yaml"


# -- resume checks ---------------------------------------------------------------------------------

def _saved_checkpoint(tmp_path: Path, overrides: list[str]) -> Path:
    tag = tmp_path / "checkpoints" / tag_for(40)
    tag.mkdir(parents=True)
    (tag / "config.yaml").write_text(to_yaml(load_config(TINY, overrides)))
    (tag / META).write_text(json.dumps({"step": 40, "world_size": 1, "zero_stage": 0}))
    return tag


def test_resuming_with_another_model_names_the_differing_keys(tmp_path: Path) -> None:
    tag = _saved_checkpoint(tmp_path, ["max_steps=100"])
    with pytest.raises(ConfigError, match=r"^resume: .* holds another model \(model\.d_embed: checkpoint 64, "
                                          r"this run 32; model\.max_len: checkpoint 128, this run 256\)"):
        check_resume(load_config(TINY, ["model.d_embed=32", "model.max_len=256", "model.d_latent=64"]), tag)
    # keys that change no parameter shape may differ
    check_resume(load_config(TINY, ["max_steps=100", "model.dropout=0.1", "model.activation_checkpointing=true"]),
                 tag)


def test_resuming_with_a_larger_max_steps_warns_with_the_lr_jump(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    tag = _saved_checkpoint(tmp_path, ["max_steps=50"])
    with caplog.at_level(logging.WARNING):
        check_resume(load_config(TINY, ["max_steps=50"]), tag)
        assert not caplog.records
        check_resume(load_config(TINY, ["max_steps=500"]), tag)
    # tiny_text: lr 1e-3, 10 warmup steps, min ratio 0.1. Step 40 of 50: cosine progress 30/39, ratio
    # 0.1 + 0.9 * 0.5 * (1 + cos(pi * 30/39)) = 0.2132; of 500: progress 30/489, ratio 0.9917.
    msg = caplog.records[-1].getMessage()
    assert "max_steps changed from 50 (checkpoint) to 500" in msg
    assert "moves from 0.000213 to 0.000992" in msg


# -- evaluation masks ------------------------------------------------------------------------------

def test_random_evaluation_masks_do_not_depend_on_the_weights_but_guided_ones_do() -> None:
    batch = text_batch()
    masks = {}
    for seed in (0, 1):  # two different sets of weights
        torch.manual_seed(seed)
        model = build_pretrain_model(tiny_perceiver(), TEXT_MASKING).eval()
        for mode in ("guided", "random"):
            out = model(batch, generator=torch.Generator().manual_seed(7), mode=mode)
            masks[seed, mode] = out.mask
    assert torch.equal(masks[0, "random"], masks[1, "random"])
    assert not torch.equal(masks[0, "guided"], masks[1, "guided"])
    assert int(masks[0, "random"].sum()) == int(masks[0, "guided"].sum())  # the same ratio


# -- the run directory lock ------------------------------------------------------------------------

_HOLD = """
import sys, time
from sma.train.rundir import RunDirLock
lock = RunDirLock(sys.argv[1], "pretrain")
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_held_run_dir_is_refused_naming_the_holder_and_freed_when_it_is_killed(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirBusy, match=rf"^run_dir: {tmp_path} is in use by pretrain on host \S+, pid "
                                             rf"{holder.pid}, started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d"):
            RunDirLock(tmp_path, "finetune").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunDirLock(tmp_path, "finetune") as lock:  # the kernel released the dead holder's lock
        assert lock.holder()["pid"] == os.getpid()


@pytest.mark.slow
def test_a_second_run_on_a_live_run_dir_is_refused_and_the_first_is_unharmed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = start(1, [f"run_dir={run_dir}", "max_steps=100000", "checkpoint_every=0", "log_every=1",
                      "wandb_mode=disabled"])
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "metrics.jsonl").is_file():  # training has started
            assert first.proc.poll() is None, first.output()[-3000:]
            assert time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.5)
        holder = RunDirLock(run_dir, "x").holder()
        second = run(1, [f"run_dir={run_dir}", "resume=auto", "max_steps=5", "wandb_mode=disabled"], expect=2)
        out = second.output()
        assert f"config error: run_dir: {run_dir} is in use by pretrain on host {holder['host']}, pid {holder['pid']}" in out
        assert "Traceback" not in out
        assert first.proc.poll() is None  # the first run goes on
        steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(1, len(steps) + 1))  # one writer: no interleaved or repeated steps
    finally:
        os.killpg(first.proc.pid, signal.SIGKILL)  # kill -9 leaves no lock behind
        first.wait()
    done = run(1, [f"run_dir={run_dir}", "max_steps=4", "checkpoint_every=0", "wandb_mode=disabled",
                   "data.micro_batch_size=2"])
    out = done.output()
    assert f"Done: 4 steps in {run_dir}" in out
    assert f"checkpoint  {run_dir}/checkpoints/step00000004" in out
    assert f"export      python -m sma.export {run_dir}/checkpoints" in out


# -- a full disk during a save ---------------------------------------------------------------------

def _small_file_limit() -> None:
    """In the launcher: no file may grow past 256 kB (a checkpoint's model states are larger), as when a
    disk fills; Python ignores SIGXFSZ, so the write fails with an OSError instead of killing the rank."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))


@pytest.mark.slow
def test_a_failed_save_keeps_the_previous_checkpoint_and_ends_in_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    base = [f"run_dir={run_dir}", "checkpoint_every=4", "wandb_mode=disabled", "data.micro_batch_size=2"]
    run(1, base + ["max_steps=4"])
    job = run(1, base + ["max_steps=8", "resume=auto"], expect=2, preexec_fn=_small_file_limit)
    out = job.output()
    assert f"checkpoint error (rank 0): could not write checkpoint {run_dir}/checkpoints/step00000008" in out
    assert "the previous checkpoint step00000004 is kept" in out
    assert "Traceback" not in out
    ckpts = run_dir / "checkpoints"
    assert (ckpts / LATEST).read_text() == "step00000004"
    assert sorted(p.name for p in ckpts.iterdir()) == [LATEST, "step00000004"]
    run(1, base + ["max_steps=8", "resume=auto"])  # space is back: the run continues from step 4
    assert (ckpts / LATEST).read_text() == "step00000008"
