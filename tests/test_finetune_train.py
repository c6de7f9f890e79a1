"""Fine-tuning through train/finetune.py on the real DeepSpeed engine: from a checkpoint folder, an
export and from scratch; results that hold the numbers the run computed; the encoder starts as the
checkpoint's; 1 and 2 ranks train alike with a global batch; a killed fine-tune resumes exactly; a
task the checkpoint cannot take is refused naming the key."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

from sma.checkpoint import load_pretrained_weights
from sma.embed import load_encoder
from sma.export import export
from sma.finetune.results import RESULTS_JSON, RESULTS_MD
from sma.finetune.trainer import TRIAL_FILE
from sma.model import build_finetune_model
from sma.results import gather
from sma.train.metrics import read_metrics
from helpers_train import FINETUNE, TINY, assert_fp32_masters_of, run

pytestmark = pytest.mark.slow


def _write_task(root: Path) -> Path:
    """A labelled CSV (does the text hold a digit?) and a fine-tune config for the tiny text model."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    rows = []
    for i in range(96):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
        label = i % 2
        if label:
            text += f" {rng.randint(0, 99)}"
        rows.append((text, label))
    data = root / "digits.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "has_digit"])
        w.writerows(rows)
    config = root / "ft.yaml"
    config.write_text(f"""extends: {TINY}
task: {{name: table, path: {data}, input_column: text, label_columns: [has_digit], kind: classification,
        split: random}}
finetune: {{epochs: 3, seeds: [0]}}
optim: {{lr: 1.0e-3, warmup_steps: 2, global_batch_size: 16}}
data: {{micro_batch_size: 8}}
log_every: 1
wandb_mode: disabled
""")
    return config


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("finetune")


@pytest.fixture(scope="module")
def pretrained(root: Path) -> Path:
    """A pretraining run's checkpoints folder (tiny text model, 4 steps)."""
    run_dir = root / "pre"
    run(1, [f"run_dir={run_dir}", "max_steps=4", "checkpoint_every=0", "wandb_mode=disabled"])
    return run_dir / "checkpoints"


@pytest.fixture(scope="module")
def config(root: Path) -> Path:
    return _write_task(root)


@pytest.fixture(scope="module")
def finetuned(root: Path, pretrained: Path, config: Path) -> dict[str, Path]:
    """Run directories of 1-rank fine-tunes from the checkpoint folder, its export and from scratch."""
    inits = {"ckpt": pretrained, "export": export(pretrained, root / "pre.pt"), "scratch": "none",
             "probe": pretrained}
    dirs = {}
    for name, init in inits.items():
        dirs[name] = root / f"ft_{name}"
        extra = ["finetune.mode=linear_probe", "finetune.epochs=1"] if name == "probe" else []
        job = _finetune(1, config, [f"init={init}", f"run_dir={dirs[name]}", *extra])
        (dirs[name] / "output.log").write_text(job.output())
    return dirs


def _finetune(nprocs: int, config: Path, overrides: list[str], **kw):
    return run(nprocs, overrides, config=str(config), script=FINETUNE, **kw)


def test_finetune_from_checkpoint_export_and_scratch_reports_what_it_computed(finetuned: dict[str, Path],
                                                                              root: Path) -> None:
    finetuned = {k: v for k, v in finetuned.items() if k != "probe"}
    for name, run_dir in finetuned.items():
        out = (run_dir / "output.log").read_text()
        if name == "scratch":
            assert "encoder initialized" not in out
        else:
            assert "encoder initialized from " in out and "equal to the checkpoint's" in out
        results = json.loads((run_dir / RESULTS_JSON).read_text())
        trial_dir = run_dir / "lr0.001-seed0"
        trial = json.loads((trial_dir / TRIAL_FILE).read_text())
        evals = [r for r in read_metrics(trial_dir) if "epoch" in r]
        assert [r["epoch"] for r in evals] == [1, 2, 3]
        # the reported test accuracy is the best validation epoch's, as logged during training
        best = max(evals, key=lambda r: (r["eval_valid_accuracy"], -r["epoch"]))
        assert trial["best_epoch"] == best["epoch"]
        assert results["test"]["accuracy"]["values"] == [best["eval_test_accuracy"]]
        assert results["chosen_lr"] == 0.001 and results["split_mode"] == "random seed 0"
        md = (run_dir / RESULTS_MD).read_text()
        assert f"| table:digits.csv | random seed 0 | accuracy | {best['eval_test_accuracy']:.4f} ± 0.0000 | 1 |" in md
    # the same encoder from the checkpoint folder and from its export trains identically
    losses = {n: [r["loss"] for r in read_metrics(d / "lr0.001-seed0")] for n, d in finetuned.items()}
    assert losses["ckpt"] == losses["export"]
    assert losses["ckpt"] != losses["scratch"]
    table = gather([str(d) for d in finetuned.values()])
    assert table.count("| table:digits.csv |") == 3


def test_a_linear_probe_trains_the_head_and_leaves_the_encoder_as_pretrained(finetuned: dict[str, Path],
                                                                            pretrained: Path) -> None:
    before, _ = load_pretrained_weights(pretrained)
    after, cfg = load_pretrained_weights(finetuned["probe"] / "lr0.001-seed0" / "checkpoints")
    assert cfg.finetune.mode == "linear_probe"
    encoder = [k for k in after if k.startswith("backbone.")]
    assert encoder and all(torch.equal(after[k], before[k]) for k in encoder)
    torch.manual_seed(cfg.seed)
    start = build_finetune_model(cfg.model, 2)
    assert not torch.equal(after["head.out.weight"], start.state_dict()["head.out.weight"])


def test_a_bf16_finetune_without_zero_loads_with_its_fp32_master_weights(root: Path, pretrained: Path,
                                                                          config: Path) -> None:
    """Without ZeRO, DeepSpeed keeps bf16 weights in the model states and the fp32 masters per optimizer
    group by position; the fine-tune's groups (per layer depth) differ from pretraining's."""
    run_dir = root / "ft_bf16"
    _finetune(1, config, [f"init={pretrained}", f"run_dir={run_dir}", "precision=bf16", "zero_stage=0",
                          "finetune.epochs=1", "finetune.layer_decay=0.8"])
    checkpoints = run_dir / "lr0.001-seed0" / "checkpoints"
    tag = checkpoints / (checkpoints / "latest").read_text()
    weights, _ = load_pretrained_weights(checkpoints)
    assert "head.out.weight" in weights and "query" in weights
    assert_fp32_masters_of(tag, weights)
    model, _ = load_encoder(str(checkpoints), torch.device("cpu"), pool="query")
    assert torch.equal(model.state_dict()["query"], weights["query"])
    # a checkpoint of an older version names no groups: its bf16 weights are read as they are
    meta = json.loads((tag / "meta.json").read_text())
    del meta["optimizer_params"]
    (tag / "meta.json").write_text(json.dumps(meta))
    older, _ = load_pretrained_weights(checkpoints)
    bf16 = torch.load(tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    assert older.keys() == bf16.keys() and all(torch.equal(older[k], v.float()) for k, v in bf16.items())


def test_two_ranks_with_a_global_batch_follow_the_one_rank_run(finetuned: dict[str, Path], root: Path,
                                                                pretrained: Path, config: Path) -> None:
    two = root / "ft_two_ranks"  # and ZeRO-3: parameters gathered for the encoder check and every prediction
    _finetune(2, config, [f"init={pretrained}", f"run_dir={two}", "zero_stage=3"])
    one_records, two_records = (read_metrics(d / "lr0.001-seed0") for d in (finetuned["ckpt"], two))
    assert [r["step"] for r in one_records] == [r["step"] for r in two_records]
    for one, other in zip(one_records, two_records):  # 1 rank x 2 micro-batches vs 2 ranks x 1: the same batches
        assert one["loss"] == pytest.approx(other["loss"], rel=1e-4, abs=1e-5)
        for key in ("eval_valid_accuracy", "eval_test_accuracy"):
            assert one.get(key) == pytest.approx(other.get(key))


def test_a_killed_finetune_resumes_exactly(finetuned: dict[str, Path], root: Path, pretrained: Path,
                                           config: Path) -> None:
    whole, broken = finetuned["ckpt"], root / "ft_broken"
    steps_per_epoch = read_metrics(whole / "lr0.001-seed0")[-1]["step"] // 3
    # killed while saving the second epoch's checkpoint: the first epoch's is the newest complete one
    _finetune(1, config, [f"init={pretrained}", f"run_dir={broken}"], expect=None,
              env={"SMA_KILL_DURING_SAVE_AT_STEP": str(2 * steps_per_epoch)})
    assert not (broken / RESULTS_JSON).exists()
    _finetune(1, config, [f"init={pretrained}", f"run_dir={broken}", "resume=auto"])
    _assert_same_training(whole, broken)
    a, b = (json.loads((d / RESULTS_JSON).read_text()) for d in (whole, broken))
    assert a["test"] == b["test"] and a["trials"][0]["history"] == b["trials"][0]["history"]


def _assert_same_training(a: Path, b: Path) -> None:
    """Every logged figure but wall-clock ones is equal step for step."""
    clock = {"tokens_per_s", "samples_per_s", "step_seconds", "peak_memory_mb"}
    ra, rb = read_metrics(a / "lr0.001-seed0"), read_metrics(b / "lr0.001-seed0")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in clock} for r in rs]  # noqa: E731
    assert strip(ra) == strip(rb)


def test_a_task_the_checkpoint_cannot_take_is_refused_naming_the_key(tmp_path: Path, pretrained: Path) -> None:
    ckpts = pretrained
    data = tmp_path / "table.csv"
    data.write_text("f1,f2,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    config = tmp_path / "cont.yaml"
    config.write_text(f"""task: {{name: table, path: {data}, feature_columns: [f1, f2], label_columns: [y],
        kind: classification}}
wandb_mode: disabled
""")
    job = _finetune(1, config, [f"init={ckpts}", f"run_dir={tmp_path / 'x'}"], expect=2)
    assert ("config error: task.name: table has continuous inputs, but the model from init= takes "
            "model.modality=bytes") in job.output()
    job = _finetune(1, config, [f"init={ckpts}", f"run_dir={tmp_path / 'y'}", "model.max_len=512"], expect=2)
    assert "config error: model.max_len: 512 is longer than the checkpoint's position table (128 positions)" in job.output()
    job = _finetune(1, config, ["init=none", f"run_dir={tmp_path / 'z'}"], expect=2)
    assert "config error: model: init=none trains the config's model from scratch, and the config has no model" in job.output()
