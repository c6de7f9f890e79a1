"""Fine-tuning and downstream evaluation: labelled tasks read from the files their publishers distribute,
trained on the one engine.

- ``trainer``: ``train/finetune.py``: init resolution, the ``Finetuner`` trial, the lr x seed sweep
- ``results``: the lr choice, test mean ± std over seeds, ``results.json`` / ``results.md``

- ``tasks``: ``TaskData`` / ``Split``, the task registry, ``load_task``, the SMA paper's figures
- ``taskdata``: the ``TaskData`` / ``Split`` containers and train-statistics standardization
- ``tables``: CSV / TSV / JSON lines / parquet from any fsspec URL, rows kept with their locations
- ``table_task``: the ``table`` task (a user's file): columns -> encoded inputs, labels, splits
- ``splits``: seeded random fractions, split columns, seeded subsets
- ``scaffold``: deepchem's ScaffoldSplitter and chemprop's balanced scaffold split
- ``higgs``, ``tape``, ``moleculenet``, ``glue``: the benchmarks; ``images``: ImageFolder classification
- ``metrics``: accuracy, ROC-AUC, MCC, F1, Spearman, Pearson, RMSE, MAE via scikit-learn / scipy
"""
