"""sma: Self-guided Masked Autoencoders (Xie et al., ICLR 2024), domain-agnostic masked pretraining.

Entry points: ``sma.model.build_pretrain_model`` / ``build_finetune_model`` (the model from a config),
``sma.config.load_config`` (the one config schema), ``sma.data.build_loader`` (shard readers),
``sma.checkpoint.load_pretrained`` (exported weights without DeepSpeed). Commands: ``train/pretrain.py``,
``train/finetune.py`` (``sma.finetune``), ``python -m sma.export``, ``sma.results``, ``sma.embed``,
``sma.visualize``, ``sma-params``.
"""

__version__ = "0.1.0"
