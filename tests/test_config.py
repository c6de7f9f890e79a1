"""The config schema: shipped configs load, paper recipes are the SMA paper's, and bad settings
fail at load time with a message naming the key."""

from __future__ import annotations

import subprocess
import sys
import re
from pathlib import Path

import pytest
import torch

from sma.config import ConfigError, config_from_dict, load_config, to_dict
from sma.train.optim import batch_plan

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = CONFIGS / "tiny_text.yaml"
SHIPPED = ["default", "text_16l", "protein_16l", "higgs_4l", "chem_12l", "text_16l_random", "protein_16l_random",
           "higgs_4l_random", "chem_12l_random", "tiny_text", "tiny_protein", "tiny_higgs"]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_loads_and_takes_the_run_overrides(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml", ["run_dir=/tmp/x", "max_steps=7", "checkpoint_every=3",
                                                  "resume=auto", "zero_stage=3", "seed=5"])
    assert (cfg.run_dir, cfg.max_steps, cfg.checkpoint_every, cfg.resume, cfg.zero_stage, cfg.seed) == (
        "/tmp/x", 7, 3, "auto", 3, 5)


def test_quickstart_configs_need_no_download() -> None:
    for name in ("default", "tiny_text", "tiny_protein", "tiny_higgs"):
        assert load_config(CONFIGS / f"{name}.yaml").data.format == "builtin", name


@pytest.mark.parametrize("name, encoder, n, layers, width, ratio, per_query, lr", [
    ("text_16l", "perceiver", 1024, 16, 1024, 0.15, 4, 1e-4),
    ("protein_16l", "perceiver", 1024, 16, 1024, 0.15, 4, 3e-4),
    ("chem_12l", "transformer", 256, 12, 768, 0.3, 3, 1e-4),
    ("higgs_4l", "transformer", 28, 4, 128, 0.2, 3, 1e-4),
])
def test_paper_configs_follow_the_published_recipes(name: str, encoder: str, n: int, layers: int, width: int,
                                                    ratio: float, per_query: int, lr: float) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    m = cfg.model
    assert (m.encoder, m.max_len, m.num_layers, cfg.masking.ratio, cfg.masking.num_per_query, cfg.optim.lr) == (
        encoder, n, layers, ratio, per_query, lr)
    assert (m.d_latent if encoder == "perceiver" else m.d_embed) == width
    if encoder == "perceiver":
        assert (m.num_latents, m.d_embed, m.cross_qk_dim, m.cross_heads) == (256, 512, 256, 8)
    else:
        assert cfg.masking.mask_self and cfg.masking.head_aggregation == "random_mix"
    assert cfg.optim.global_batch_size == (128 if name == "chem_12l" else 256)
    assert cfg.model.dropout == 0.0 and cfg.optim.betas == [0.9, 0.999]


def test_random_baselines_differ_from_their_recipe_only_in_masking_mode_and_run_dir() -> None:
    for name in ("text_16l", "protein_16l", "chem_12l", "higgs_4l"):
        base, rand = to_dict(load_config(CONFIGS / f"{name}.yaml")), to_dict(load_config(CONFIGS / f"{name}_random.yaml"))
        assert rand["masking"]["mode"] == "random" and base["masking"]["mode"] == "guided"
        rand["masking"]["mode"], rand["run_dir"] = "guided", base["run_dir"]
        assert rand == base, name


def test_higgs_uses_the_random_to_guided_curriculum() -> None:
    masking = load_config(CONFIGS / "higgs_4l.yaml").masking
    assert (masking.select_initial_ratio, masking.curriculum_fraction) == (1.0, 0.25)


@pytest.mark.parametrize("overrides, key", [
    (["masking.ratio=1.5"], "masking.ratio"),
    (["masking.ratio=0"], "masking.ratio"),
    (["model.num_latents=500"], "model.num_latents"),  # more latents than tokens (n = 128)
    (["zero_stage=4"], "zero_stage"),
    (["model.no_such_key=1"], "model.no_such_key"),
    (["max_stepz=10"], "max_stepz"),
    (["max_steps=ten"], "max_steps"),
    (["precision=fp8"], "precision"),
    (["optim.offload_optimizer=true"], "optim.offload_optimizer"),  # ZeRO 0 has nothing to offload
    (["optim.offload_optimizer=true", "zero_stage=3"], "optim.offload_optimizer"),  # torch AdamW can't
    (["optim.betas=[0.9]"], "optim.betas"),
    (["masking.mask_self=true"], "masking.mask_self"),  # perceiver
    (["log_every=0"], "log_every"),
    (["data.format=mds", "data.train_url=data/x/train", "eval_every=10"], "data.eval_url"),
])
def test_bad_settings_fail_at_load_naming_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(TINY, overrides)
    assert str(err.value).startswith(key), str(err.value)


def test_malformed_override_and_missing_file_are_reported() -> None:
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(TINY, ["max_steps"])
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(CONFIGS / "nope.yaml")


def test_extends_layers_files_and_rejects_cycles(tmp_path: Path) -> None:
    (tmp_path / "child.yaml").write_text(f"extends: {TINY}\nmax_steps: 3\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.max_steps == 3 and cfg.model.d_embed == load_config(TINY).model.d_embed
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends"):
        load_config(tmp_path / "a.yaml")


def test_global_batch_size_is_kept_on_any_world_size_that_divides_it() -> None:
    cfg = load_config(TINY, ["optim.global_batch_size=64", "data.micro_batch_size=8"])
    assert [batch_plan(cfg, w) for w in (1, 2, 4, 8, 16, 64)] == [(8, 8), (8, 4), (8, 2), (8, 1), (4, 1), (1, 1)]
    odd = load_config(TINY, ["optim.global_batch_size=48", "data.micro_batch_size=10"])
    assert batch_plan(odd, 1) == (8, 6) and batch_plan(odd, 2) == (8, 3) and batch_plan(odd, 3) == (8, 2)
    for world in range(1, 49):
        if 48 % world == 0:
            micro, accum = batch_plan(odd, world)
            assert micro <= 10 and micro * accum * world == 48
    with pytest.raises(ConfigError, match="optim.global_batch_size: 64 samples cannot be split evenly over 3"):
        batch_plan(cfg, 3)
    plain = load_config(TINY, ["data.micro_batch_size=8", "optim.grad_accum=3"])
    assert batch_plan(plain, 5) == (8, 3)


@pytest.mark.parametrize("script", ["text.sh", "protein.sh", "higgs.sh"])
def test_each_slurm_script_allocation_fits_its_recipe_and_8x_more_nodes_too(script: str) -> None:
    body = (CONFIGS.parent / "slurm" / script).read_text()
    nodes, gpus = (int(re.search(rf"#SBATCH --{key}=(\d+)", body)[1]) for key in ("nodes", "gpus-per-node"))
    cfg = load_config(CONFIGS.parent / re.search(r"SMA_CONFIG:-(\S+)}", body)[1])
    for ranks in (nodes * gpus, 8 * nodes * gpus, 1):
        micro, accum = batch_plan(cfg, ranks)
        assert micro * accum * ranks == cfg.optim.global_batch_size and micro <= cfg.data.micro_batch_size


def test_config_round_trips_through_a_plain_dict() -> None:
    cfg = load_config(CONFIGS / "higgs_4l.yaml")
    assert config_from_dict(to_dict(cfg)) == cfg
    bad = to_dict(cfg)
    bad["masking"]["ratio"] = 2.0
    with pytest.raises(ConfigError, match="masking.ratio"):
        config_from_dict(bad)


def _pretrain(*overrides: str) -> subprocess.CompletedProcess:
    script = Path(__file__).resolve().parents[1] / "train" / "pretrain.py"
    return subprocess.run([sys.executable, str(script), "--config", str(TINY), *overrides],
                          capture_output=True, text=True, timeout=300)


def test_pretrain_command_rejects_a_bad_config_before_starting(tmp_path: Path) -> None:
    proc = _pretrain("masking.ratio=1.5", f"run_dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert "masking.ratio" in proc.stderr and "(0, 1)" in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing written for a run that never started


def test_pretrain_command_will_not_start_over_a_finished_run(tmp_path: Path) -> None:
    args = (f"run_dir={tmp_path / 'run'}", "max_steps=2", "eval_every=0", "wandb_mode=disabled")
    first = _pretrain(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    again = _pretrain(*args)
    assert again.returncode == 2 and "pass resume=auto to continue" in again.stderr, again.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics  # nothing of the first run touched
    assert _pretrain(*args, "resume=auto").returncode == 0  # already at max_steps: nothing to do


@pytest.mark.parametrize("fmt", ["mds", "wds"])
def test_pretrain_command_names_missing_shards_without_a_traceback(tmp_path: Path, fmt: str) -> None:
    missing = tmp_path / "not_prepared" / "train"
    proc = _pretrain(f"data.format={fmt}", f"data.train_url={missing}", f"data.eval_url={missing}",
                     f"run_dir={tmp_path / 'run'}", "wandb_mode=disabled")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert f"data error (rank 0): {missing}/" in proc.stderr and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is only refused on a CPU-only machine")
def test_fp16_on_cpu_is_refused_naming_precision(tmp_path: Path) -> None:
    proc = _pretrain("precision=fp16", f"run_dir={tmp_path / 'run'}", "wandb_mode=disabled")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "config error: precision: fp16 needs a GPU" in proc.stderr

