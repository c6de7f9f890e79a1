"""Fine-tuning tasks read from small files in their publishers' exact layouts: parsing, label types,
splits, counts, and the errors for bad settings and bad data."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from sma.config import ConfigError, TaskConfig
from sma.finetune import higgs as higgs_task
from sma.finetune.tasks import PAPER, TASK_NAMES, load_task, paper_figures
from sma.inputs import SEP, InputError, decode
from test_prep_formats import higgs_rows, write_higgs_csv_gz, write_higgs_small

MAX_LEN = 64


def write_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def task(**kw) -> TaskConfig:
    return TaskConfig(**kw)


# ---- the user's table --------------------------------------------------------------------------------

REVIEWS = [["great, really great", "pos"], ["awful", "neg"], ["fine I guess", "neutral"], ["loved it", "pos"],
           ["hated it", "neg"], ["meh", "neutral"], ["superb", "pos"], ["boring", "neg"], ["ok", "neutral"],
           ["wonderful", "pos"]]


def write_reviews(path: Path) -> Path:
    """The same ten reviews in the format the suffix names."""
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": [r[0] for r in REVIEWS], "label": [r[1] for r in REVIEWS]}), path)
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in REVIEWS))
    else:
        write_csv(path, ["text", "label"], REVIEWS, "\t" if name.endswith(".tsv") else ",")
    return path


@pytest.mark.parametrize("file", ["reviews.csv", "reviews.tsv.gz", "reviews.jsonl", "reviews.parquet"])
def test_table_reads_every_format_to_the_same_classification_task(tmp_path, file):
    path = write_reviews(tmp_path / file)
    data = load_task(task(path=str(path), input_column="text", label_columns=["label"], kind="classification",
                          fractions=[0.6, 0.2, 0.2], split_seed=3), MAX_LEN)
    assert (data.name, data.kind, data.modality, data.num_outputs) == ("table", "classification", "bytes", 3)
    assert data.label_names == ["neg", "neutral", "pos"]  # class ids in sorted order
    assert data.split_mode == "random seed 3" and data.metrics == ("accuracy",)
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 6, "valid": 2, "test": 2}
    rows = {decode(x): (int(y), i) for s in data.splits.values() for x, y, i in zip(s.inputs, s.targets, s.ids)}
    assert rows["great, really great"][0] == 2 and rows["meh"][0] == 1 and rows["boring"][0] == 0
    first = "line 2" if file.endswith((".csv", ".tsv.gz")) else ("line 1" if file.endswith(".jsonl") else "row 0")
    assert rows["great, really great"][1] == f"{file}:{first}"
    assert all(s.targets.dtype == np.int64 for s in data.splits.values())
    assert all(x.dtype == np.int16 and x[-1] == SEP for s in data.splits.values() for x in s.inputs)
    assert data.info["rows_read"] == {str(path): 10} and data.paper == {}


def test_table_reads_any_fsspec_url(tmp_path):
    import fsspec

    with fsspec.open("memory://finetune-test/reviews.csv", "wb") as f:
        f.write(write_reviews(tmp_path / "r.csv").read_bytes())
    data = load_task(task(path="memory://finetune-test/reviews.csv", input_column="text", label_columns=["label"],
                          kind="classification"), MAX_LEN)
    assert sum(len(s) for s in data.splits.values()) == 10
    assert data.info["source_files"] == ["memory://finetune-test/reviews.csv"]


def test_table_random_split_is_seeded(tmp_path):
    path = write_reviews(tmp_path / "r.csv")
    cfg = dict(path=str(path), input_column="text", label_columns=["label"], kind="classification")
    ids = [load_task(task(split_seed=s, **cfg), MAX_LEN).splits["test"].ids for s in (0, 0, 1)]
    assert ids[0] == ids[1] and ids[0] != ids[2] and len(ids[0]) == 1  # 10 - int((0.8 + 0.1) * 10)


def test_table_integer_classes_sort_numerically_and_long_inputs_are_truncated(tmp_path):
    rows = [["x" * 200, "10"], ["b", "2"], ["c", "1"], ["d", "2"], ["e", "10"], ["f", "1"]]
    path = write_csv(tmp_path / "t.csv", ["seq", "y"], rows)
    data = load_task(task(path=str(path), input_column="seq", label_columns=["y"], kind="classification",
                          fractions=[0.5, 0.25, 0.25]), 16)
    assert data.label_names == ["1", "2", "10"]
    longest = max((x for s in data.splits.values() for x in s.inputs), key=len)
    assert len(longest) == 16 and longest[-1] == SEP


def test_table_pairs_binary_labels_and_missing_labels(tmp_path):
    rows = [["a1", "b1", "1", "0"], ["a2", "b2", "true", ""], ["a3", "b3", "False", "1"], ["a4", "b4", "0", "1.0"],
            ["a5", "b5", "", ""], ["a6", "b6", "1", "0"]]
    path = write_csv(tmp_path / "pairs.csv", ["a", "b", "l1", "l2"], rows)
    data = load_task(task(path=str(path), input_column="a", pair_column="b", label_columns=["l1", "l2"],
                          kind="binary", split="file", valid_path=str(path), test_path=str(path)), MAX_LEN)
    train = data.splits["train"]
    assert data.num_outputs == 2 and data.label_names == ["l1", "l2"] and data.split_mode == "files"
    assert len(train) == 5 and data.info["rows_dropped"]["no label"] == 3  # a5 in each of the three files
    assert decode(train.inputs[0]) == "a1\tb1"
    assert train.targets.dtype == np.float32 and train.targets.shape == (5, 2)
    np.testing.assert_array_equal(train.targets[:4], [[1, 0], [1, np.nan], [0, 1], [0, 1]])


def test_table_feature_columns_are_standardized_with_train_statistics_and_split_by_column(tmp_path):
    rows = [[str(i), str(10 * i), str(i % 3 * 1.5), "train" if i < 6 else ("Validation" if i < 8 else "test")]
            for i in range(10)]
    path = write_csv(tmp_path / "num.csv", ["f1", "f2", "y", "fold"], rows)
    data = load_task(task(path=str(path), feature_columns=["f1", "f2"], label_columns=["y"], kind="regression",
                          split="column", split_column="fold"), MAX_LEN)
    assert data.modality == "continuous" and data.split_mode == "column 'fold'"
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 6, "valid": 2, "test": 2}
    train = np.stack(data.splits["train"].inputs)
    assert train.shape == (6, 2, 1) and train.dtype == np.float32
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(train.std(0), 1, atol=1e-5)
    # test rows 8, 9 with the train mean 2.5 and std sqrt(35/12) of f1 = 0..5
    test_f1 = np.stack(data.splits["test"].inputs)[:, 0, 0]
    np.testing.assert_allclose(test_f1, (np.array([8, 9]) - 2.5) / np.sqrt(35 / 12), rtol=1e-5)
    np.testing.assert_allclose(data.splits["test"].targets, [[8 % 3 * 1.5], [0.0]])  # original units
    assert data.metrics == ("rmse", "mae")


def test_table_missing_label_column_names_the_key_file_and_columns(tmp_path):
    path = write_reviews(tmp_path / "r.csv")
    with pytest.raises(ConfigError, match=rf"^task.label_columns: column 'y' not in {path} \(columns: text, label\)"):
        load_task(task(path=str(path), input_column="text", label_columns=["y"], kind="classification"), MAX_LEN)


def test_table_label_that_is_not_a_number_names_file_line_column_and_value(tmp_path):
    path = write_csv(tmp_path / "r.csv", ["smiles", "logS"], [["CCO", "0.5"], ["CCC", "n/a?"]])
    with pytest.raises(InputError, match=rf"{path} line 3, column 'logS': a regression label must be a number, "
                                         r"got 'n/a\?'"):
        load_task(task(path=str(path), input_column="smiles", label_columns=["logS"], kind="regression"), MAX_LEN)
    with pytest.raises(InputError, match=rf"{path} line 2, column 'logS': a binary label must be 0/1 or true/false"):
        load_task(task(path=str(path), input_column="smiles", label_columns=["logS"], kind="binary"), MAX_LEN)
    path = write_csv(tmp_path / "f.csv", ["a", "y"], [["1.5", "0"], ["nan", "1"]])
    with pytest.raises(InputError, match=rf"{path} line 3, column 'a': a feature must be a finite number, got 'nan'"):
        load_task(task(path=str(path), feature_columns=["a"], label_columns=["y"], kind="binary"), MAX_LEN)


def test_table_empty_split_names_the_split_and_the_task(tmp_path):
    path = write_reviews(tmp_path / "r.csv")
    with pytest.raises(InputError, match=r"task table: the valid split is empty \(split: random seed 0\)"):
        load_task(task(path=str(path), input_column="text", label_columns=["label"], kind="classification",
                       fractions=[0.9, 0.0, 0.1]), MAX_LEN)


def test_table_invalid_smiles_are_counted_reported_and_left_out(tmp_path, caplog):
    rows = [[s, "1.5"] for s in ("CCO", "c1ccccc1", "C1CC", "CCN", "CN(C)(C)(C)C", "CCCl", "CC(=O)O", "CCCO")]
    path = write_csv(tmp_path / "mols.csv", ["smiles", "y"], rows)
    with caplog.at_level(logging.WARNING):
        data = load_task(task(path=str(path), input_column="smiles", label_columns=["y"], kind="regression",
                              smiles=True, fractions=[0.5, 0.25, 0.25]), MAX_LEN)
    assert sum(len(s) for s in data.splits.values()) == 6
    bad = data.info["invalid_smiles"]
    assert bad["count"] == 2 and data.info["rows_dropped"] == {"invalid SMILES": 2}
    assert bad["examples"] == [{"line": f"{path} line 4", "value": "C1CC"},
                               {"line": f"{path} line 6", "value": "CN(C)(C)(C)C"}]
    assert "2 invalid SMILES left out of every split" in caplog.text and "C1CC" in caplog.text
    kept = {decode(x) for s in data.splits.values() for x in s.inputs}
    assert "C1CC" not in kept and "CCO" in kept


@pytest.mark.parametrize("settings, key", [
    (dict(input_column="text", feature_columns=["a"], label_columns=["label"], kind="binary"), "task.input_column"),
    (dict(input_column="text", label_columns=["label"], kind=""), "task.kind"),
    (dict(input_column="text", label_columns=[], kind="binary"), "task.label_columns"),
    (dict(input_column="text", label_columns=["label"], kind="binary", split="scaffold"), "task.split"),
    (dict(input_column="text", label_columns=["label"], kind="binary", split="column"), "task.split_column"),
    (dict(input_column="text", label_columns=["label"], kind="binary", split="file"), "task.valid_path"),
    (dict(input_column="text", label_columns=["label"], kind="binary", fractions=[0.5, 0.5]), "task.fractions"),
    (dict(input_column="txt", label_columns=["label"], kind="binary"), "task.input_column"),
])
def test_table_bad_settings_name_the_key(tmp_path, settings, key):
    path = write_reviews(tmp_path / "r.csv")
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        load_task(task(path=str(path), **settings), MAX_LEN)


def test_unknown_task_and_missing_file_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="^task.name: 'bbbq' is not one of table, higgs"):
        load_task(task(name="bbbq"), MAX_LEN)
    with pytest.raises(ConfigError, match=rf"^task.path: {tmp_path}/none.csv does not exist"):
        load_task(task(path=str(tmp_path / "none.csv"), input_column="a", label_columns=["b"], kind="binary"), MAX_LEN)


def test_bad_rows_of_a_text_table_name_their_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("text,label\nfine,pos\ntoo,many,fields\n")
    with pytest.raises(InputError, match=rf"{path} line 3: 3 fields, expected 2"):
        load_task(task(path=str(path), input_column="text", label_columns=["label"], kind="classification"), MAX_LEN)


# ---- MoleculeNet -------------------------------------------------------------------------------------

# 11 valid molecules whose deepchem scaffold split (0.8 / 0.1 / 0.1) is train 8 / valid 1 / test 2
# (derived in test_finetune_scaffold.py), and one that RDKit rejects (pentavalent nitrogen, as in BBBP).
MOLECULES = ["Cc1ccccc1", "C1CCCCC1", "CCO", "c1ccccc1", "c1ccncc1", "CC1CCCCC1", "Oc1ccccc1", "CCCC",
             "c1ccc2ccccc2c1", "Cc1ccncc1", "CCc1ccccc1"]
INVALID = "CN(C)(C)(C)C"
LAYOUTS = {  # file, header, the SMILES column, the label column
    "bbbp": ("BBBP.csv", ["num", "name", "p_np", "smiles"], "smiles", "p_np"),
    "bace": ("bace.csv", ["mol", "CID", "Class", "Model", "pIC50", "MW"], "mol", "Class"),
    "hiv": ("HIV.csv", ["smiles", "activity", "HIV_active"], "smiles", "HIV_active"),
    "esol": ("delaney-processed.csv", ["Compound ID", "ESOL predicted log solubility in mols per litre",
                                       "Minimum Degree", "Molecular Weight", "Number of H-Bond Donors",
                                       "Number of Rings", "Number of Rotatable Bonds", "Polar Surface Area",
                                       "measured log solubility in mols per litre", "smiles"],
             "smiles", "measured log solubility in mols per litre"),
    "freesolv": ("SAMPL.csv", ["iupac", "smiles", "expt", "calc"], "smiles", "expt"),
    "lipo": ("Lipophilicity.csv", ["CMPD_CHEMBLID", "exp", "smiles"], "smiles", "exp"),
}


def write_moleculenet(folder: Path, name: str) -> Path:
    file, header, smiles_col, label_col = LAYOUTS[name]
    binary = name in ("bbbp", "bace", "hiv")
    rows = []
    for i, s in enumerate([*MOLECULES[:5], INVALID, *MOLECULES[5:]]):
        row = {c: f"x{i}, with a comma" if c in ("name", "iupac") else str(i) for c in header}
        row[smiles_col] = s
        row[label_col] = str(i % 2) if binary else f"{-1.5 + 0.25 * i:.2f}"
        rows.append([row[c] for c in header])
    return write_csv(folder / file, header, rows)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_moleculenet_files_load_with_deepchem_scaffold_splits_by_default(tmp_path, name):
    path = write_moleculenet(tmp_path, name)
    data = load_task(task(name=name, path=str(tmp_path)), MAX_LEN)  # the folder: the file by its published name
    binary = name in ("bbbp", "bace", "hiv")
    assert data.kind == ("binary" if binary else "regression") and data.num_outputs == 1
    assert data.metrics == (("roc_auc",) if binary else ("rmse", "mae"))
    assert data.split_mode == "scaffold (deepchem)"
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 8, "valid": 1, "test": 2}
    assert data.info["invalid_smiles"] == {"count": 1, "examples": [{"line": f"{path} line 7", "value": INVALID}]}
    assert data.paper == PAPER[name] and data.paper
    assert decode(data.splits["valid"].inputs[0]) == "c1ccc2ccccc2c1"
    test = data.splits["test"]
    assert [decode(x) for x in test.inputs] == ["C1CCCCC1", "CC1CCCCC1"]
    assert test.ids == [f"{path.name}:line 3", f"{path.name}:line 8"]
    if not binary:  # original units: row 7 of the file is molecule index 6
        np.testing.assert_allclose(test.targets, [[-1.25], [-0.0]])


def test_moleculenet_balanced_and_random_splits_are_seeded_and_have_no_paper_figure(tmp_path):
    write_moleculenet(tmp_path, "bbbp")
    balanced = dict(name="bbbp", split="scaffold_balanced", fractions=[0.6, 0.2, 0.2])
    a = load_task(task(path=str(tmp_path), split_seed=1, **balanced), MAX_LEN)
    b = load_task(task(path=str(tmp_path / "BBBP.csv"), split_seed=1, **balanced), MAX_LEN)
    c = load_task(task(path=str(tmp_path), split_seed=2, **balanced), MAX_LEN)
    assert a.split_mode == "scaffold_balanced seed 1" and a.paper == {}
    assert all(a.splits[s].ids == b.splits[s].ids for s in a.splits)
    assert a.splits["test"].ids != c.splits["test"].ids
    r = load_task(task(name="bbbp", path=str(tmp_path), split="random", split_seed=0,
                       fractions=[0.6, 0.2, 0.2]), MAX_LEN)
    assert r.split_mode == "random seed 0"
    assert {s: len(v) for s, v in r.splits.items()} == {"train": 6, "valid": 2, "test": 3}


def test_moleculenet_settings_that_contradict_the_benchmark_are_refused(tmp_path):
    write_moleculenet(tmp_path, "bbbp")
    with pytest.raises(ConfigError, match="^task.label_columns: the bbbp benchmark sets it to"):
        load_task(task(name="bbbp", path=str(tmp_path), label_columns=["num"]), MAX_LEN)


# ---- HIGGS -------------------------------------------------------------------------------------------

def test_higgs_csv_takes_the_last_rows_as_test_and_seeded_label_subsets(tmp_path, monkeypatch):
    # 1,030 rows; the rule "the last HIGGS_TEST_ROWS rows are test" with 10 instead of 500,000 here.
    monkeypatch.setattr(higgs_task, "HIGGS_TEST_ROWS", 10)
    rows = higgs_rows(1030)
    path = write_higgs_csv_gz(tmp_path / "HIGGS.csv.gz", rows)
    data = load_task(task(name="higgs", path=str(path), train_labels=20, split_seed=5), MAX_LEN)
    sizes = {s: len(v) for s, v in data.splits.items()}
    assert sizes == {"train": 20, "valid": 1000, "test": 10}  # valid: at least HIGGS_MIN_VALID rows
    assert (data.kind, data.num_outputs, data.modality, data.metrics) == ("classification", 2, "continuous",
                                                                          ("accuracy", "roc_auc"))
    test = data.splits["test"]
    assert test.ids == [f"HIGGS.csv.gz:line {n}" for n in range(1021, 1031)]
    np.testing.assert_array_equal(test.targets, rows[1020:, 0].astype(np.int64))
    lines = {int(i.rsplit(" ", 1)[1]) for s in ("train", "valid") for i in data.splits[s].ids}
    assert len(lines) == 1020 and max(lines) == 1020  # train and valid: disjoint, all before the test rows
    train_lines = [int(i.rsplit(" ", 1)[1]) for i in data.splits["train"].ids]
    x = np.stack(data.splits["train"].inputs)
    assert x.shape == (20, 28, 1)
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-5)  # standardized with train statistics
    raw = rows[np.array(train_lines) - 1, 1:]
    np.testing.assert_allclose(x[:, :, 0], (raw - raw.mean(0)) / raw.std(0), atol=1e-4)
    assert "last 10 of 1030 rows are test" in data.split_mode and "seed 5" in data.split_mode
    again = load_task(task(name="higgs", path=str(path), train_labels=20, split_seed=5), MAX_LEN)
    assert again.splits["train"].ids == data.splits["train"].ids
    more = load_task(task(name="higgs", path=str(path), train_labels=19, split_seed=5), MAX_LEN)
    assert set(more.splits["train"].ids) < set(data.splits["train"].ids)  # fewer labels: a subset
    with pytest.raises(ConfigError, match="^task.train_labels: 100 labels \\+ 1000 validation rows exceed the 1020"):
        load_task(task(name="higgs", path=str(path), train_labels=100), MAX_LEN)


def test_higgs_small_folder_keeps_its_splits(tmp_path):
    folder = write_higgs_small(tmp_path / "higgs_small")
    data = load_task(task(name="higgs_small", path=str(folder)), MAX_LEN)
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 40, "valid": 12, "test": 16}
    assert data.split_mode == "files" and data.paper == {"accuracy": 0.748}
    np.testing.assert_array_equal(data.splits["valid"].targets, np.load(folder / "y_val.npy"))
    train = np.load(folder / "N_train.npy")
    np.testing.assert_allclose(np.stack(data.splits["test"].inputs)[:, :, 0],
                               (np.load(folder / "N_test.npy") - train.mean(0)) / train.std(0), atol=1e-4)
    assert data.splits["test"].ids[3] == "N_test.npy:row 3"
    sizes = (("train", 40), ("val", 12), ("test", 16))
    assert data.info["rows_read"] == {str(folder / f"N_{s}.npy"): n for s, n in sizes}
    few = load_task(task(name="higgs_small", path=str(folder), train_labels=10, split_seed=1), MAX_LEN)
    assert len(few.splits["train"]) == 10 and set(few.splits["train"].ids) < set(data.splits["train"].ids)
    assert few.split_mode == "files; train 10 seeded rows (seed 1)" and few.paper == {}
    with pytest.raises(ConfigError, match="^task.path: higgs reads the HIGGS.csv"):
        load_task(task(name="higgs", path=str(folder)), MAX_LEN)


# ---- TAPE --------------------------------------------------------------------------------------------

def write_lmdb(path: Path, records: list[dict]) -> None:
    import lmdb

    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"num_examples", pickle.dumps(len(records)))
        for i, r in enumerate(records):
            txn.put(str(i).encode(), pickle.dumps(r))
    env.close()


def test_tape_remote_homology_from_lmdb_with_a_chosen_holdout(tmp_path):
    folder = tmp_path / "remote_homology"
    folder.mkdir()
    for split, n in (("train", 6), ("valid", 2), ("test_fold_holdout", 3), ("test_family_holdout", 4)):
        write_lmdb(folder / f"remote_homology_{split}.lmdb",
                   [{"id": f"d{split[:4]}{i}", "primary": "MKV" * (i + 1), "protein_length": 3 * (i + 1),
                     "fold_label": 7 * i, "superfamily_label": 1, "family_label": 2} for i in range(n)])
    data = load_task(task(name="tape_remote_homology", path=str(tmp_path)), MAX_LEN)  # the parent folder
    assert data.num_outputs == 1195 and len(data.label_names) == 1195 and data.metrics == ("accuracy",)
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 6, "valid": 2, "test": 3}
    assert data.splits["train"].targets.tolist() == [0, 7, 14, 21, 28, 35]
    assert data.splits["test"].ids == ["dtest0", "dtest1", "dtest2"] and data.paper == {"accuracy": 0.23}
    assert decode(data.splits["train"].inputs[1]) == "MKVMKV"
    family = load_task(task(name="tape_remote_homology", path=str(folder), test_split="test_family_holdout"), MAX_LEN)
    assert len(family.splits["test"]) == 4 and family.split_mode == "files (test: test_family_holdout)"
    assert family.paper == {}
    with pytest.raises(ConfigError, match="^task.test_split: 'test_fold' is not one of test_fold_holdout"):
        load_task(task(name="tape_remote_homology", path=str(folder), test_split="test_fold"), MAX_LEN)


def test_tape_fluorescence_json_takes_one_element_list_labels(tmp_path):
    for split, n in (("train", 5), ("valid", 2), ("test", 2)):
        recs = [{"primary": "SKGEELFTG" + "A" * i, "protein_length": 9 + i, "log_fluorescence": [3.0 + i],
                 "num_mutations": i} for i in range(n)]
        (tmp_path / f"fluorescence_{split}.json").write_text(json.dumps(recs))
    data = load_task(task(name="tape_fluorescence", path=str(tmp_path)), MAX_LEN)
    assert (data.kind, data.metrics, data.label_names) == ("regression", ("spearman",), ["log_fluorescence"])
    assert data.splits["train"].targets.dtype == np.float32
    np.testing.assert_array_equal(data.splits["train"].targets, [[3.0], [4.0], [5.0], [6.0], [7.0]])
    assert data.splits["valid"].ids == ["fluorescence_valid.json:record 0", "fluorescence_valid.json:record 1"]
    recs[1]["log_fluorescence"] = ["bright"]
    (tmp_path / "fluorescence_test.json").write_text(json.dumps(recs))
    with pytest.raises(InputError, match="fluorescence_test.json record 1, field 'log_fluorescence': "
                                         "log_fluorescence must be a number, got 'bright'"):
        load_task(task(name="tape_fluorescence", path=str(tmp_path)), MAX_LEN)
    with pytest.raises(ConfigError, match="^task.path: no TAPE file for the train split of stability"):
        load_task(task(name="tape_stability", path=str(tmp_path)), MAX_LEN)


# ---- GLUE --------------------------------------------------------------------------------------------

def write_tsv(path: Path, lines: list[str], bom: bool = False) -> None:
    path.write_text(("\ufeff" if bom else "") + "".join(line + "\n" for line in lines), encoding="utf-8")


def test_glue_cola_has_no_header_and_reports_mcc(tmp_path):
    rows = [f"gj04\t{i % 2}\t{'' if i % 2 else '*'}\tSentence {i} with \"a stray quote." for i in range(20)]
    write_tsv(tmp_path / "train.tsv", rows)
    write_tsv(tmp_path / "dev.tsv", rows[:4])
    data = load_task(task(name="cola", path=str(tmp_path), split_seed=2), MAX_LEN)
    assert data.metrics == ("mcc",) and data.label_names == ["0", "1"]
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 18, "valid": 2, "test": 4}
    assert data.split_mode == "GLUE dev as test (test labels hidden); valid: 2 train rows, seed 2"
    assert decode(data.splits["test"].inputs[0]) == 'Sentence 0 with "a stray quote.'
    assert data.splits["test"].targets.tolist() == [0, 1, 0, 1]
    assert not set(data.splits["train"].ids) & set(data.splits["valid"].ids)


def test_glue_mrpc_pairs_with_the_byte_order_mark_header(tmp_path):
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    rows = [f"{i % 2}\t70{i}\t80{i}\tAmrozi accused his brother , whom he called \" the witness \" .\tReply {i} ."
            for i in range(10)]
    write_tsv(tmp_path / "train.tsv", [header, *rows], bom=True)
    write_tsv(tmp_path / "dev.tsv", [header, *rows[:3]], bom=True)
    data = load_task(task(name="mrpc", path=str(tmp_path)), MAX_LEN)
    assert data.metrics == ("f1", "accuracy") and data.kind == "classification" and data.num_outputs == 2
    first = data.splits["test"].inputs[0]
    assert decode(first).startswith("Amrozi accused") and decode(first).endswith("\tReply 0 .")
    assert (first == SEP).sum() == 2 and len(first) == MAX_LEN  # A [SEP] B [SEP], cut to max_len


def test_glue_qqp_leaves_out_malformed_rows_and_counts_them(tmp_path):
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    rows = [f"{i}\t{2 * i}\t{2 * i + 1}\tHow do I {i}?\tWhat is {i}?\t{i % 2}" for i in range(10)]
    write_tsv(tmp_path / "train.tsv", [header, *rows[:5], "363362\tHow is it?\t0", *rows[5:]])
    write_tsv(tmp_path / "dev.tsv", [header, *rows[:2]])
    data = load_task(task(name="qqp", path=str(tmp_path)), MAX_LEN)
    assert sum(len(data.splits[s]) for s in ("train", "valid")) == 10
    assert data.info["rows_dropped"] == {"3 fields instead of 6": 1}
    assert data.info["rows_read"][str(tmp_path / "train.tsv")] == 11


@pytest.mark.parametrize("name, header, row, classes", [
    ("sst2", "sentence\tlabel", "hide new secretions from the parental units \t{y}", ["0", "1"]),
    ("qnli", "index\tquestion\tsentence\tlabel", "{i}\tWhat came into force?\tThe law did.\t{y}",
     ["entailment", "not_entailment"]),
    ("rte", "index\tsentence1\tsentence2\tlabel", "{i}\tNo weapons were found.\tWeapons were found.\t{y}",
     ["entailment", "not_entailment"]),
])
def test_glue_single_sentence_and_pair_layouts(tmp_path, name, header, row, classes):
    rows = [row.format(i=i, y=classes[i % 2]) for i in range(10)]
    write_tsv(tmp_path / "train.tsv", [header, *rows])
    write_tsv(tmp_path / "dev.tsv", [header, *rows[:4]])
    data = load_task(task(name=name, path=str(tmp_path)), MAX_LEN)
    assert data.label_names == classes and data.metrics == ("accuracy",)
    assert data.splits["test"].targets.tolist() == [0, 1, 0, 1]
    assert (data.splits["test"].inputs[0] == SEP).sum() == (1 if name == "sst2" else 2)


def test_glue_stsb_is_regression_and_mnli_chooses_its_dev_file(tmp_path):
    sts = tmp_path / "STS-B"
    sts.mkdir()
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    rows = [f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\tA plane {i}.\tAn air plane {i}.\t{i / 4:.3f}"
            for i in range(12)]
    write_tsv(sts / "train.tsv", [header, *rows])
    write_tsv(sts / "dev.tsv", [header, *rows[:3]])
    data = load_task(task(name="stsb", path=str(sts)), MAX_LEN)
    assert (data.kind, data.metrics, data.label_names) == ("regression", ("spearman", "pearson"), ["score"])
    np.testing.assert_allclose(data.splits["test"].targets, [[0.0], [0.25], [0.5]])

    mnli = tmp_path / "MNLI"
    mnli.mkdir()
    cols = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t" \
           "sentence2_parse\tsentence1\tsentence2"
    labels = ("entailment", "neutral", "contradiction")
    train = [f"{i}\t1\t1e\tgov\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tPremise {i}\tHypothesis {i}\t{labels[i % 3]}\t"
             f"{labels[i % 3]}" for i in range(12)]
    write_tsv(mnli / "train.tsv", [cols + "\tlabel1\tgold_label", *train])
    for name, label in (("dev_matched", "neutral"), ("dev_mismatched", "contradiction")):
        dev = [f"{i}\t1\t1n\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tP {i}\tH {i}\t{label}\t{label}\t{label}\t"
               f"{label}\t{label}\t{label}" for i in range(3)]
        write_tsv(mnli / f"{name}.tsv", [cols + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label", *dev])
    matched = load_task(task(name="mnli", path=str(mnli)), MAX_LEN)
    assert matched.label_names == ["contradiction", "entailment", "neutral"]
    assert matched.splits["test"].targets.tolist() == [2, 2, 2]
    assert matched.split_mode.startswith("GLUE dev_matched as test (test labels hidden)")
    mismatched = load_task(task(name="mnli", path=str(mnli), test_split="dev_mismatched"), MAX_LEN)
    assert mismatched.splits["test"].targets.tolist() == [0, 0, 0]
    with pytest.raises(ConfigError, match="^task.split: mnli has fixed splits"):
        load_task(task(name="mnli", path=str(mnli), split="random"), MAX_LEN)
    with pytest.raises(ConfigError, match="^task.test_split: 'dev' is not one of dev_matched, dev_mismatched"):
        load_task(task(name="mnli", path=str(mnli), test_split="dev"), MAX_LEN)
    write_tsv(mnli / "dev_matched.tsv", [cols + "\tlabel1\tgold_label", "0\t1\t1n\tf\ta\tb\ta\tb\tP\tH\t-\t-"])
    with pytest.raises(InputError, match=r"dev_matched.tsv line 2, column 'gold_label': label '-' is not one of"):
        load_task(task(name="mnli", path=str(mnli)), MAX_LEN)


# ---- the registry ------------------------------------------------------------------------------------

def test_registry_names_and_paper_figures():
    assert set(TASK_NAMES) == {"table", "higgs", "higgs_small", "tape_remote_homology", "tape_fluorescence",
                               "tape_stability", "bbbp", "bace", "hiv", "esol", "freesolv", "lipo", "cola", "sst2",
                               "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "images"}
    assert [paper_figures(task(name="higgs", train_labels=n)) for n in (1000, 10_000, 100_000, 0)] == [
        {"accuracy": 0.6947}, {"accuracy": 0.7404}, {"accuracy": 0.7788}, {}]
    assert paper_figures(task(name="tape_stability")) == {"spearman": 0.80}
    assert paper_figures(task(name="freesolv")) == {"rmse": 1.09}
    assert paper_figures(task(name="freesolv", split="random")) == {}
    assert paper_figures(task(name="rte")) == {} and paper_figures(task(name="table")) == {}
