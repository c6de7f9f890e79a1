"""Gather fine-tuning results into one table.

    python -m sma.results runs/ft_*              # every run directory holding a results.json
    python -m sma.results runs/ft_* --out all.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sma.finetune.results import RESULTS_JSON, markdown_table, rows_of


def gather(run_dirs: list[str]) -> str:
    """One markdown table over the runs' ``results.json`` files; a folder without one is an error
    naming it."""
    rows = []
    for d in run_dirs:
        path = Path(d) / RESULTS_JSON
        if not path.is_file():
            raise FileNotFoundError(f"{d} has no {RESULTS_JSON} (is it a finished fine-tuning run?)")
        rows += rows_of(json.loads(path.read_text()))
    return markdown_table(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", help="fine-tuning run directories")
    p.add_argument("--out", help="also write the table to this file")
    args = p.parse_args(argv)
    try:
        table = gather(args.run_dirs)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
