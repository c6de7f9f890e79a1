"""Regenerate the small labelled set ``sma/data/builtin/chembl2321810_pic50.csv`` for the fine-tuning demo.

1,017 molecules of ChEMBL assay set CHEMBL2321810 (a series of sulfonamides) with their measured potency
(pIC50), as RDKit ships them in ``rdkit/Contrib/FreeWilson/data`` (``CHEMBL2321810.smi`` and
``CHEMBL2321810_act.csv``); ChEMBL data are CC BY-SA 3.0 (EMBL-EBI). The two files are joined on the
compound id into one CSV with the columns ``chembl_id,smiles,pIC50``, rows in the .smi file's order.

    python -m data_prep.builtin_chembl [--out PATH]
"""

from __future__ import annotations

import argparse
import csv
from importlib import resources
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "sma" / "data" / "builtin" / "chembl2321810_pic50.csv"


def joined_rows() -> list[tuple[str, str, str]]:
    data = resources.files("rdkit").joinpath("Contrib", "FreeWilson", "data")
    with data.joinpath("CHEMBL2321810_act.csv").open() as f:
        activity = {row["Name"]: row["Act"] for row in csv.DictReader(f)}
    rows = []
    for line in data.joinpath("CHEMBL2321810.smi").read_text().splitlines():
        if line.strip():
            smiles, name = line.split()
            rows.append((f"CHEMBL{name}", smiles, activity[name]))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    with args.out.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["chembl_id", "smiles", "pIC50"])
        writer.writerows(joined_rows())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
