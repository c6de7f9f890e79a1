"""Export a DeepSpeed training checkpoint (any ZeRO stage, any world size) to one consolidated file of
fp32 model weights that loads without DeepSpeed (``sma.checkpoint.load_pretrained``).

    python -m sma.export runs/text_16l/checkpoints model.pt             # the latest checkpoint
    python -m sma.export runs/text_16l/checkpoints/step00020000 model.pt
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from sma.checkpoint import FORMAT
from sma.config import ConfigError, TrainConfig, config_from_dict, to_dict
from sma.model import build_pretrain_model
from sma.train.checkpointing import atomic_torch_save, read_meta, resolve_checkpoint, saved_config
from sma.train.optim import param_groups

log = logging.getLogger("sma.export")


def consolidated_state_dict(tag_dir: Path, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Full fp32 weights of checkpoint ``tag_dir``: gathered from the per-rank ZeRO partitions with
    DeepSpeed's own reconstruction; without ZeRO, the model states, with bf16/fp16 weights replaced by
    the optimizer's fp32 master copies."""
    if any(tag_dir.glob("*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return dict(get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name))
    states = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    weights = {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}
    masters = (states.get("optimizer") or {}).get("fp32_groups")
    if masters:
        # DeepSpeed stores the masters per optimizer param group, by position: meta.json names them.
        groups = optimizer_params(tag_dir, cfg, set(weights))
        if groups is None:
            log.warning("%s records no names for its optimizer's fp32 master weights (saved by an older "
                        "version) and is no pretraining run: its %s weights are used as they are", tag_dir,
                        cfg.precision)
            return weights
        for group, fp32 in zip(groups, masters, strict=True):
            for name, master in zip(group, fp32, strict=True):
                weights[name] = master.float()
    return weights


def optimizer_params(tag_dir: Path, cfg: TrainConfig, saved: set[str]) -> list[list[str]] | None:
    """The parameter names of each optimizer group of checkpoint ``tag_dir``, in order, as its meta.json
    records them. Older checkpoints: the pretraining groups rebuilt, if ``saved`` (the checkpoint's
    weight names) is a pretraining model's; otherwise None (a fine-tune's groups depend on its settings)."""
    recorded = read_meta(tag_dir).get("optimizer_params")
    if recorded is not None:
        return recorded
    model = build_pretrain_model(cfg.model, cfg.masking)
    if set(model.state_dict()) != saved:
        return None
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in param_groups(model, cfg.optim.weight_decay)]


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """Write ``out`` from a checkpoints folder (its latest) or one tag folder; returns ``out``."""
    tag_dir = resolve_checkpoint(Path(checkpoint))
    cfg = config_from_dict(saved_config(tag_dir))
    blob = {"format": FORMAT, "config": to_dict(cfg), "model": consolidated_state_dict(tag_dir, cfg),
            "step": read_meta(tag_dir)["step"]}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(blob, out)  # never leave a half-written export behind
    log.info("exported %s (step %d, %d tensors) to %s", tag_dir, blob["step"], len(blob["model"]), out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a run's checkpoints folder (exports its latest) or one step folder")
    p.add_argument("out", help="output file, e.g. model.pt")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        export(args.checkpoint, args.out)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
