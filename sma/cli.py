"""``sma-params``: parameter counts of the paper's model sizes (or of any config file)."""

from __future__ import annotations

import argparse
import sys

import torch

from rich.console import Console
from rich.table import Table

from sma.config import ConfigError, MaskingConfig, ModelConfig, load_config
from sma.model import build_pretrain_model, count_parameters

# The sizes of the SMA paper (Xie et al., ICLR 2024).
PAPER_SIZES: dict[str, ModelConfig] = {
    "text / protein (Perceiver, 256 x 1024, 16 layers)": ModelConfig(
        modality="bytes", encoder="perceiver", max_len=1024, d_embed=512, num_latents=256, d_latent=1024,
        num_layers=16, num_heads=8, cross_heads=8, cross_qk_dim=256, decoder_dim=512, decoder_heads=8),
    "chemistry (Transformer, 12 x 768, 12 heads)": ModelConfig(
        modality="bytes", encoder="transformer", max_len=512, d_embed=768, num_layers=12, num_heads=12,
        decoder_dim=768, decoder_heads=12),
    "HIGGS (Transformer, 4 x 128, 8 heads)": ModelConfig(
        modality="continuous", d_raw=1, encoder="transformer", max_len=28, d_embed=128, num_layers=4,
        num_heads=8, decoder_dim=128, decoder_heads=8),
}


def parameter_table(sizes: dict[str, ModelConfig]) -> Table:
    table = Table(title="SMA parameter counts")
    for col in ("model", "encoder (embedding + layers)", "decoder", "total"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, cfg in sizes.items():
        with torch.device("meta"):  # shapes only: no memory, no initialization cost
            model = build_pretrain_model(cfg, MaskingConfig(mask_self=cfg.encoder == "transformer"))
        enc = count_parameters(model.backbone)
        total = count_parameters(model)
        table.add_row(name, f"{enc / 1e6:.2f} M", f"{(total - enc) / 1e6:.2f} M", f"{total / 1e6:.2f} M")
    return table


def params_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print parameter counts of the paper's SMA sizes, or of configs.")
    parser.add_argument("configs", nargs="*", help="YAML configs to count instead of the paper's sizes")
    args = parser.parse_args(argv)
    try:
        sizes = {path: load_config(path).model for path in args.configs} if args.configs else PAPER_SIZES
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    Console().print(parameter_table(sizes))


if __name__ == "__main__":
    params_main()
