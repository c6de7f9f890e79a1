"""Pretraining with DeepSpeed, apart from the model: process setup (``env``), the DeepSpeed config,
optimizer and schedule (``optim``, ``schedule``), checkpoints and resume (``checkpointing``, ``rng``),
logging (``metrics``, ``memory``), stop signals (``preemption``), and the loop itself (``loop``).
``train/pretrain.py`` is the command line (``launch``)."""
