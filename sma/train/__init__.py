"""Pretraining with DeepSpeed: engine and optimizer wiring (``optim``), LR schedule (``schedule``),
checkpoints (``checkpointing``), logging (``metrics``), preemption, and the loop (``loop``)."""
