"""Training logs, written by rank 0 only: a tqdm progress bar, ``<run_dir>/metrics.jsonl`` (one JSON
object per logged step), and wandb (offline unless configured)."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sma.train.checkpointing import atomic_write_text

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``<run_dir>/metrics.jsonl``, in order."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger:
    """Rank 0 writes; on other ranks every method is a no-op, so the loop needs no rank checks."""

    def __init__(self, run_dir: Path, *, enabled: bool, start_step: int, max_steps: int,
                 wandb_mode: str, wandb_project: str, config: dict[str, Any], desc: str = "train") -> None:
        self.enabled = enabled
        self.latest: dict[str, Any] = {}  # the newest value of every logged key, for the closing summary
        self.bar: tqdm | None = None
        self.wandb_run: Any = None
        if not enabled:
            return
        self.path = run_dir / METRICS_FILE
        self._truncate_after(start_step)
        self.bar = tqdm(total=max_steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True)
        mode = os.environ.get("WANDB_MODE", wandb_mode)  # the user's environment wins over the config
        self.wandb_mode = mode
        if mode != "disabled":
            self.wandb_run = self._init_wandb(run_dir, mode, wandb_project, config)

    def _truncate_after(self, step: int) -> None:
        """Drop records past ``step``: a resumed run repeats those steps and must not log them twice."""
        if not self.path.is_file():
            return
        kept = [r for r in read_metrics(self.path.parent) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    @staticmethod
    def _init_wandb(run_dir: Path, mode: str, project: str, config: dict[str, Any]) -> Any:
        import wandb

        # A stable run id stored in the run directory makes a resumed job continue the same wandb run.
        id_file = run_dir / "wandb_id"
        if not id_file.is_file():
            id_file.write_text(uuid.uuid4().hex[:12])  # os.urandom: leaves the seeded RNGs alone
        return wandb.init(project=project, dir=str(run_dir), mode=mode, id=id_file.read_text().strip(),
                          resume="allow", config=config)

    def log(self, record: dict[str, Any]) -> None:
        """Append one step's record (must hold ``step``) to every sink."""
        if not self.enabled:
            return
        self.latest.update(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def progress(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
