"""sma: Self-guided Masked Autoencoders (Xie et al., ICLR 2024), domain-agnostic masked pretraining.

Entry points: ``sma.model.build_pretrain_model`` / ``build_finetune_model`` (the model from a config),
``sma.config.load_config`` (the one config schema), ``sma.data.build_loader`` (shard readers),
``sma.checkpoint.load_pretrained`` (exported weights without DeepSpeed).
"""

__version__ = "0.1.0"
