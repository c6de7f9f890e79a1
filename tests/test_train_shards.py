"""Pretraining from MDS and tar shards as 2-rank DeepSpeed jobs with reader workers: a run resumed from
a mid-epoch checkpoint reproduces the uninterrupted run's losses, across the epoch boundary that follows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep import text
from sma.train.metrics import read_metrics
from helpers_train import run
from test_prep_formats import FORMATS, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("streaming_shm_cleanup")]

STEPS, SAVED_AT = 24, 10  # 16 samples a step over 2 ranks; an epoch is ~15 steps, so the resume is mid-epoch


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    docs = [f"Document {i}. " + " ".join(f"word{(i * 7 + j) % 97}" for j in range(20 + i % 60)) for i in range(90)]
    srcs = [str(write_jsonl(root / f"{k}.jsonl", docs[k::3])) for k in range(3)]
    for fmt in FORMATS:
        text.main(["--src", *srcs, "--dst", str(root / fmt), "--format", fmt, "--window", "128",
                   "--shard-samples", "20", "--quiet"])
    return root


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_from_shards_mid_epoch_reproduces_the_uninterrupted_run(shards: Path, tmp_path: Path, fmt: str) -> None:
    url = shards / fmt / "train"
    common = ["zero_stage=1", "precision=fp32", f"max_steps={STEPS}", f"checkpoint_every={SAVED_AT}",
              "keep_last=3", "log_every=1", "eval_every=0", "wandb_mode=disabled", f"data.format={fmt}",
              f"data.train_url={url}", "data.num_workers=2", "data.shuffle_buffer=32"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    samples = json.loads((shards / fmt / "manifest.json").read_text())["splits"]["train"]["samples"]
    assert SAVED_AT < samples // 16 < STEPS  # saved mid-epoch; the second epoch starts after the resume
    run(2, [f"run_dir={full}", *common])
    checkpoint = full / "checkpoints" / f"step{SAVED_AT:08d}"
    run(2, [f"run_dir={resumed}", *common, f"resume={checkpoint}"], launcher="torchrun")
    reference, after = losses(full), losses(resumed)
    assert sorted(after) == list(range(SAVED_AT + 1, STEPS + 1))
    assert [after[s] for s in after] == [reference[s] for s in after]
    assert reference[STEPS] < reference[1]
