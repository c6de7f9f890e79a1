"""MoleculeNet benchmarks from the CSV files deepchem / MoleculeNet distribute: presets of the ``table``
task (a SMILES column, one label, ``smiles: true``), split by deepchem's scaffold splitter by default
(``task.split: scaffold_balanced`` with ``split_seed``, or ``random``, also work).

``task.path``: the CSV file, or the folder holding it under its published name.
"""

from __future__ import annotations

from dataclasses import dataclass

from sma.config import TaskConfig
from sma.data.storage import filesystem, join
from sma.finetune.table_task import load_table, preset
from sma.finetune.taskdata import TaskData


@dataclass(frozen=True)
class Benchmark:
    file: str
    smiles_column: str
    label: str
    kind: str  # binary | regression


BENCHMARKS = {
    "bbbp": Benchmark("BBBP.csv", "smiles", "p_np", "binary"),  # num,name,p_np,smiles
    "bace": Benchmark("bace.csv", "mol", "Class", "binary"),  # mol,CID,Class,Model,pIC50,...
    "hiv": Benchmark("HIV.csv", "smiles", "HIV_active", "binary"),  # smiles,activity,HIV_active
    "esol": Benchmark("delaney-processed.csv", "smiles", "measured log solubility in mols per litre", "regression"),
    "freesolv": Benchmark("SAMPL.csv", "smiles", "expt", "regression"),  # iupac,smiles,expt,calc
    "lipo": Benchmark("Lipophilicity.csv", "smiles", "exp", "regression"),  # CMPD_CHEMBLID,exp,smiles
}
NAMES = tuple(BENCHMARKS)
METRICS = {"binary": ("roc_auc",), "regression": ("rmse", "mae")}
DEFAULT_SPLIT = "scaffold"  # the SMA paper's (deepchem's) split


def load(cfg: TaskConfig, max_len: int) -> TaskData:
    b = BENCHMARKS[cfg.name]
    path = cfg.path
    if path:
        fs, local = filesystem(path)
        if fs.isdir(local):
            path = join(path, b.file)
    table_cfg = preset(cfg, cfg.name, input_column=b.smiles_column, label_columns=[b.label], kind=b.kind,
                       smiles=True, file_format="csv")
    table_cfg.path = path
    table_cfg.split = cfg.split or DEFAULT_SPLIT
    return load_table(table_cfg, max_len, name=cfg.name, metrics=METRICS[b.kind])
