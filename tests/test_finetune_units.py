"""Fine-tuning pieces that need no engine: layer-wise lr decay groups, the linear probe's frozen encoder,
regression targets in the label's units, the lr choice and mean ± std over seeds, init resolution."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sma.config import ConfigError, load_config, to_dict
from sma.export import FORMAT
from sma.finetune.results import markdown_table, rows_of, summarize
from sma.finetune.taskdata import StandardizedRows, continuous_splits, train_stats
from sma.finetune.trainer import SplitSamples, TargetScale, finetune_param_groups, resolve_init
from sma.model import build_finetune_model, build_pretrain_model
from sma.train.checkpointing import atomic_torch_save
from helpers_model import tiny_perceiver, tiny_transformer
from helpers_train import TINY


def _lrs_by_name(model: torch.nn.Module, groups: list[dict]) -> dict[str, float]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["lr"] for g in groups for p in g["params"]}


def test_layer_decay_scales_each_block_below_the_head() -> None:
    model = build_finetune_model(tiny_transformer(num_layers=3), num_outputs=2)  # blocks 1..3, head at 4
    lrs = _lrs_by_name(model, finetune_param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.5))
    assert lrs["head.out.weight"] == 1.0 and lrs["query"] == 1.0 and lrs["backbone.encoder.norm.weight"] == 1.0
    assert lrs["backbone.encoder.layers.2.attn.to_q.weight"] == 0.5
    assert lrs["backbone.encoder.layers.0.attn.to_q.weight"] == 0.125
    assert lrs["backbone.embed.position"] == 0.0625 and lrs["backbone.embed.token.weight"] == 0.0625
    assert len(lrs) == len(list(model.parameters()))  # every parameter in exactly one group
    # Perceiver with 2 latent layers: cross-attention and latents at depth 1, latent layers 2 and 3, head 4
    perceiver = build_finetune_model(tiny_perceiver(), num_outputs=2)
    plrs = _lrs_by_name(perceiver, finetune_param_groups(perceiver, lr=1.0, weight_decay=0.0, layer_decay=0.5))
    assert plrs["backbone.encoder.latents"] == plrs["backbone.encoder.cross.attn.to_q.weight"] == 0.125
    assert plrs["backbone.encoder.layers.1.attn.to_q.weight"] == 0.5


def test_decay_applies_to_matrices_only_and_a_linear_probe_trains_only_the_head() -> None:
    model = build_finetune_model(tiny_perceiver(), num_outputs=3)
    groups = finetune_param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=1.0)
    for g in groups:
        assert g["weight_decay"] == (0.05 if g["params"][0].ndim >= 2 else 0.0)
        assert g["lr"] == 1e-3
    model.backbone.requires_grad_(False)
    probe = {n for n in _lrs_by_name(model, finetune_param_groups(model, 1e-3, 0.05, 0.8))}
    assert probe and all(not n.startswith("backbone.") for n in probe)


def test_regression_targets_train_standardized_and_report_in_their_units() -> None:
    train = np.array([[1.0], [3.0], [5.0], [np.nan]], dtype=np.float32)
    scale = TargetScale("regression", train)
    assert scale.mean == pytest.approx([3.0]) and scale.std == pytest.approx([np.sqrt(8 / 3)])
    z = scale.to_model(np.array([[3.0], [5.0]], dtype=np.float32))
    assert z[:, 0] == pytest.approx([0.0, 2 / np.sqrt(8 / 3)])
    assert scale.to_units(z.astype(np.float64)) == pytest.approx(np.array([[3.0], [5.0]]))
    labels = np.array([0, 2, 1])
    assert TargetScale("classification", labels).to_model(labels) is labels


def _trial(lr: float, seed: int, valid: float, test: float) -> dict:
    best = {"epoch": 1, "valid_rmse": valid, "test_rmse": test}
    return {"lr": lr, "seed": seed, "best": best, "best_epoch": 1, "history": [best]}


def test_the_lr_is_chosen_on_validation_and_test_is_mean_and_std_over_seeds() -> None:
    task = SimpleNamespace(name="esol", kind="regression", split_mode="scaffold (deepchem)", metrics=("rmse",),
                           paper={"rmse": 0.623}, info={}, splits={"train": [0] * 8, "valid": [0], "test": [0]})
    cfg = load_config(TINY)
    trials = [_trial(1e-3, 0, 1.0, 0.5), _trial(1e-3, 1, 1.2, 0.7),  # valid mean 1.1: worse (rmse: lower wins)
              _trial(1e-4, 0, 0.8, 0.9), _trial(1e-4, 1, 0.9, 1.1)]  # valid mean 0.85: chosen
    results = summarize(cfg, task, "runs/chem/checkpoints", trials)
    assert results["chosen_lr"] == 1e-4
    assert results["test"]["rmse"]["mean"] == pytest.approx(1.0)
    assert results["test"]["rmse"]["std"] == pytest.approx(np.std([0.9, 1.1], ddof=1))
    assert results["test"]["rmse"]["n"] == 2
    assert rows_of(results) == [("esol", "scaffold (deepchem)", "rmse", "1.0000 ± 0.1414", "2", "0.623",
                                 "runs/chem/checkpoints", "full", "0.0001")]
    assert markdown_table(rows_of(results)).splitlines()[2].startswith("| esol | scaffold (deepchem) | rmse |")
    json.dumps(results)  # results.json takes it as it is


def test_init_resolution_takes_the_checkpoints_model_and_refuses_contradictions(tmp_path: Path) -> None:
    cfg = load_config(TINY)
    model = build_pretrain_model(cfg.model, cfg.masking)
    export = tmp_path / "pre.pt"
    atomic_torch_save({"format": FORMAT, "config": to_dict(cfg), "model": model.state_dict(), "step": 1}, export)
    ft = load_config(TINY, [f"init={export}", "model.d_embed=32"], require_model=False)
    init = resolve_init(ft, {"max_len": 64, "dropout": 0.1})
    assert (init.input_len, init.model.max_len, init.model.dropout) == (64, 128, 0.1)
    assert torch.equal(init.weights["backbone.embed.position"], model.state_dict()["backbone.embed.position"])
    with pytest.raises(ConfigError, match=r"^model\.d_embed: the checkpoint's model has 64, the config says 32"):
        resolve_init(ft, {"d_embed": 32})
    with pytest.raises(ConfigError, match=r"^init: .*nope is not a complete checkpoint"):
        resolve_init(load_config(TINY, [f"init={tmp_path / 'nope'}"]), {})
    with pytest.raises(ConfigError, match=r"^init: required"):
        resolve_init(load_config(TINY), {})
    scratch = resolve_init(load_config(TINY, ["init=none"]), {"d_embed": 64})
    assert scratch.weights is None and scratch.model.d_embed == 64


@pytest.mark.parametrize("path", sorted(str(p) for p in (Path(TINY).parent / "finetune").glob("*.yaml")))
def test_every_finetune_config_loads_and_names_a_known_task(path: str) -> None:
    from sma.finetune.tasks import TASK_NAMES

    cfg = load_config(path, require_model=False)
    assert cfg.task.name in TASK_NAMES
    assert cfg.finetune.epochs >= 1 and cfg.run_dir.startswith("runs/")


def test_the_best_epoch_is_chosen_on_validation_and_patience_stops_after_it() -> None:
    from sma.finetune.trainer import best_epoch, should_stop

    acc = [{"epoch": e, "valid_accuracy": v} for e, v in enumerate([0.6, 0.8, 0.7, 0.8, 0.75, 0.7], start=1)]
    assert best_epoch(acc, "accuracy")["epoch"] == 2  # ties: the earliest
    assert not should_stop(acc[:3], "accuracy", patience=2)  # best 2, last 3
    assert should_stop(acc[:4], "accuracy", patience=2)  # best 2, last 4: two epochs without a better one
    assert not should_stop(acc, "accuracy", patience=0)  # 0: never
    rmse = [{"epoch": e, "valid_rmse": v} for e, v in enumerate([1.0, 0.7, 0.9], start=1)]
    assert best_epoch(rmse, "rmse")["epoch"] == 2  # lower is better
    assert should_stop(rmse, "rmse", patience=1)


@pytest.mark.parametrize("dtype, per_channel", [(np.float32, False), (np.uint8, True), (np.uint8, False)])
def test_continuous_splits_read_rows_standardized_with_train_statistics_and_keep_the_raw_array(dtype, per_channel):
    rng = np.random.default_rng(0)
    raw = {s: (rng.random((n, 6, 3)) * 200 + 20).astype(dtype) for s, n in (("train", 9000), ("valid", 7),
                                                                         ("test", 5))}
    raw["train"][:, 0, 0] = 42  # a feature constant on train keeps std 1
    targets = {s: np.arange(len(x)) for s, x in raw.items()}
    ids = {s: [f"{s}{i}" for i in range(len(x))] for s, x in raw.items()}
    splits, stats = continuous_splits("t", "given", raw, targets, ids, per_channel=per_channel)
    train = raw["train"].astype(np.float64)
    axis = (0, 1) if per_channel else 0
    mean, std = train.mean(axis=axis), train.std(axis=axis)  # more rows than one chunk of the two passes
    if not per_channel:
        std[0, 0] = 1.0
    np.testing.assert_allclose(np.asarray(stats["mean"]).reshape(mean.shape), mean, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(stats["std"]).reshape(std.shape), std, rtol=1e-9)
    chunked = train_stats(raw["train"], per_channel, chunk_values=1000)  # 55 rows a chunk, the last one short
    np.testing.assert_allclose(chunked[0].reshape(mean.shape), mean, rtol=1e-12)
    np.testing.assert_allclose(chunked[1].reshape(std.shape), std, rtol=1e-9)
    for name, split in splits.items():
        assert split.inputs.raw is raw[name]  # no copy of the split, standardized or not
        rows = np.stack(list(split.inputs))
        assert rows.dtype == np.float32
        np.testing.assert_allclose(rows, (raw[name] - mean) / std, rtol=1e-5, atol=1e-5)
    # subsets and slices read the same rows, in their order
    sub = splits["train"].take([5, 2, 8000])
    assert isinstance(sub.inputs, StandardizedRows) and sub.ids == ["train5", "train2", "train8000"]
    for got, i in zip(sub.inputs, [5, 2, 8000]):
        np.testing.assert_array_equal(got, splits["train"].inputs[i])
    np.testing.assert_array_equal(sub.inputs[1:][0], splits["train"].inputs[2])
    np.testing.assert_array_equal(sub.take([2]).inputs[0], splits["train"].inputs[8000])
    with pytest.raises(IndexError):
        sub.inputs[3]
    samples = SplitSamples(sub, TargetScale("classification", sub.targets))
    assert len(samples) == 3 and [s["y"] for s in samples[1:]] == [2, 8000]
    np.testing.assert_array_equal(samples[0]["x"], splits["train"].inputs[5])
