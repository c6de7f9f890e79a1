"""Resume lookup never picks an unfinished checkpoint; reader positions carry over to other world sizes;
a resumed run's metrics log holds every step once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sma.config import ConfigError
from sma.train.checkpointing import LATEST, META, CheckpointManager, find_checkpoint, tag_for
from sma.train.env import DistEnv
from sma.train.loop import rescale_data_state
from sma.train.metrics import MetricsLogger, read_metrics


def _tag(root: Path, step: int, complete: bool) -> Path:
    d = root / tag_for(step)
    d.mkdir(parents=True)
    (d / "mp_rank_00_model_states.pt").write_bytes(b"")
    if complete:
        (d / META).write_text(json.dumps({"step": step, "world_size": 2, "zero_stage": 1}))
    return d


def test_auto_resume_is_none_on_a_fresh_run(tmp_path: Path) -> None:
    assert find_checkpoint("auto", tmp_path / "checkpoints") is None
    assert find_checkpoint("", tmp_path) is None


def test_a_fresh_start_is_refused_where_a_run_left_a_checkpoint(tmp_path: Path) -> None:
    _tag(tmp_path, 8, False)
    assert find_checkpoint("", tmp_path) is None  # an unfinished save is no run to protect
    _tag(tmp_path, 16, True)
    with pytest.raises(ConfigError, match=r"already holds a checkpoint \(step00000016\); pass resume=auto"):
        find_checkpoint("", tmp_path)


def test_auto_resume_follows_latest_and_skips_an_unfinished_save(tmp_path: Path) -> None:
    first, second = _tag(tmp_path, 8, True), _tag(tmp_path, 16, True)
    (tmp_path / LATEST).write_text(first.name)
    assert find_checkpoint("auto", tmp_path) == first  # latest wins over directory order
    _tag(tmp_path, 24, False)
    (tmp_path / LATEST).write_text(tag_for(24))  # as if latest had been written too early
    assert find_checkpoint("auto", tmp_path) == second


def test_explicit_resume_path_must_be_complete(tmp_path: Path) -> None:
    done, broken = _tag(tmp_path, 8, True), _tag(tmp_path, 16, False)
    (tmp_path / LATEST).write_text(done.name)
    assert find_checkpoint(str(tmp_path), tmp_path / "elsewhere") == done
    assert find_checkpoint(str(done), tmp_path) == done
    with pytest.raises(ConfigError, match=r"^resume: .*step00000016 is not a complete checkpoint"):
        find_checkpoint(str(broken), tmp_path)


def test_resume_needs_the_same_zero_stage_and_reshards_only_on_a_new_world_size(tmp_path: Path) -> None:
    tag = _tag(tmp_path, 8, True)  # saved by 2 ranks with ZeRO-1
    (tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"")
    one, two = (CheckpointManager(tmp_path, 2, DistEnv(0, w, 0, torch.device("cpu"))) for w in (1, 2))
    assert one.needs_universal(tag, zero_stage=1) and not two.needs_universal(tag, zero_stage=1)
    with pytest.raises(ConfigError, match=r"^zero_stage: .* saved with ZeRO stage 1; resume it with zero_stage=1"):
        two.needs_universal(tag, zero_stage=3)


class _Loader:
    batches_per_epoch = 12


def test_reader_position_keeps_its_share_of_the_epoch_on_another_world_size() -> None:
    state = {"reader": "builtin:text:train", "epoch": 3, "batch": 5}
    assert rescale_data_state(state, 2 * 8, 1 * 8, _Loader()) == {**state, "batch": 10}
    assert rescale_data_state(state, 1 * 8, 2 * 8, _Loader())["batch"] == 2
    assert rescale_data_state({**state, "batch": 7}, 2 * 8, 1 * 8, _Loader())["batch"] == 12  # clamped to the epoch
    # a global batch of 64 saved on 16 ranks x 4, resumed on 8 ranks x 8: 5 steps are still 5 steps
    assert rescale_data_state(state, 16 * 4, 8 * 8, _Loader())["batch"] == 5
    streaming = {"epoch": 1, "sample_in_epoch": 4096}  # global positions pass unchanged
    assert rescale_data_state(streaming, 2, 1, _Loader()) == streaming


def test_resumed_metrics_log_drops_the_steps_it_will_repeat(tmp_path: Path) -> None:
    kw = dict(enabled=True, max_steps=10, wandb_mode="disabled", wandb_project="sma", config={})
    first = MetricsLogger(tmp_path, start_step=0, **kw)
    for step in range(1, 7):
        first.log({"step": step, "loss": float(step)})
    first.close()
    second = MetricsLogger(tmp_path, start_step=4, **kw)  # crashed after 6, resumed from checkpoint 4
    for step in range(5, 8):
        second.log({"step": step, "loss": 10.0 + step})
    second.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 15.0), (6, 16.0), (7, 17.0)]
