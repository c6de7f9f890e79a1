"""Training with DeepSpeed, apart from the model: process setup (``env``), the DeepSpeed config,
optimizer and schedule (``optim``, ``schedule``), checkpoints and resume (``checkpointing``, ``rng``),
logging (``metrics``, ``memory``), stop signals (``preemption``), the run-directory lock (``rundir``), and
the one engine itself (``loop``: ``Trainer``, with ``Pretrainer`` here and ``sma.finetune.trainer.Finetuner``).
``train/pretrain.py`` and ``train/finetune.py`` are its command lines (``launch``)."""
