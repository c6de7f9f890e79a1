"""Embedding export (``python -m sma.embed``): the vectors are the encoder's own, in input order with their
ids, from every input format; bad rows are named by their line; 2 ranks give the output of 1."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from data_prep import text
from helpers_model import HIGGS_MASKING, SENTENCES, TEXT_MASKING, tiny_perceiver, tiny_transformer
from sma.checkpoint import FORMAT
from sma.config import TrainConfig, to_dict
from sma.data.collate import Collate
from sma.embed import embed_range, in_memory, main
from sma.data.samples import pack_windows
from sma.inputs import encode_batch, pad_continuous, pad_ids
from sma.model import SMAEncoder, build_pretrain_model
from sma.train.checkpointing import atomic_torch_save
from test_prep_formats import write_jsonl

TEXT_LEN = 48
LONG = "a line longer than the model's max_len of 48 bytes, so it is cut to fit it"


def export(path: Path, cfg: TrainConfig) -> tuple[Path, SMAEncoder]:
    """An exported checkpoint (sma.export's format) of a freshly initialized model, and its encoder."""
    torch.manual_seed(0)
    model = build_pretrain_model(cfg.model, cfg.masking).eval()
    atomic_torch_save({"format": FORMAT, "config": to_dict(cfg), "model": model.state_dict(), "step": 0}, path)
    return path, model.backbone


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> tuple[Path, SMAEncoder]:
    return export(tmp_path_factory.mktemp("ckpt") / "text.pt",
                  TrainConfig(model=tiny_perceiver(TEXT_LEN), masking=TEXT_MASKING))


@pytest.fixture(scope="module")
def table_model(tmp_path_factory) -> tuple[Path, SMAEncoder]:
    return export(tmp_path_factory.mktemp("ckpt") / "table.pt",
                  TrainConfig(model=tiny_transformer(), masking=HIGGS_MASKING))


def embed(*argv: str | Path) -> int:
    return main([str(a) for a in argv] + ["--quiet"])


@torch.no_grad()
def forward_on_texts(encoder: SMAEncoder, texts: list[str | bytes]) -> np.ndarray:
    """The Perceiver's mean final latent state, computed here from the model's own modules."""
    batch = encode_batch(texts, max_len=TEXT_LEN, truncate=True)
    return encoder(batch.inputs, batch.valid).states.mean(1).numpy()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_text_vectors_equal_the_encoders_own_forward_in_input_order(text_model, tmp_path, caplog):
    ckpt, encoder = text_model
    texts = [*SENTENCES, LONG]
    src = tmp_path / "sentences.txt"
    src.write_text("\n".join(texts) + "\n")
    out = tmp_path / "emb.npy"
    with caplog.at_level(logging.INFO):
        assert embed(ckpt, src, "--out", out, "--batch-size", "2") == 0
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (len(texts), 32)
    np.testing.assert_allclose(got, forward_on_texts(encoder, texts), atol=1e-5)
    assert lines(tmp_path / "emb.npy.ids.txt") == [f"sentences.txt:line {i}" for i in range(1, len(texts) + 1)]
    cut = sum(len(t.encode()) + 1 > TEXT_LEN for t in texts)
    assert cut >= 1 and f"{cut} input(s) longer than the model's max_len=48 were cut to fit" in caplog.text


@torch.no_grad()
def test_padded_batches_equal_each_input_embedded_alone(table_model):
    # Transformer over continuous tokens of different lengths: the mean covers the valid tokens only.
    _, encoder = table_model
    g = torch.Generator().manual_seed(0)
    samples = [torch.randn(n, 1, generator=g).numpy() for n in (28, 5, 17, 9, 1)]
    inputs = in_memory([str(i) for i in range(len(samples))], samples, Collate(28))
    got, truncated = embed_range(encoder, inputs, 0, len(samples), 3, torch.device("cpu"))
    alone = []
    for x in samples:
        batch = pad_continuous([x])
        alone.append(encoder(batch.inputs, batch.valid).states.mean(1)[0].numpy())
    np.testing.assert_allclose(got, np.stack(alone), atol=1e-5)
    assert truncated == 0


def test_table_features_are_continuous_tokens(table_model, tmp_path):
    ckpt, encoder = table_model
    rows = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    src = tmp_path / "events.csv"
    src.write_text("a,b,c,label\n" + "".join(f"{a},{b},{c},1\n" for a, b, c in rows))
    out = tmp_path / "emb.npy"
    assert embed(ckpt, src, "--out", out, "--features", "a,b,c") == 0
    batch = pad_continuous([r for r in rows])
    with torch.no_grad():
        expected = encoder(batch.inputs, batch.valid).states.mean(1).numpy()
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)
    assert lines(tmp_path / "emb.npy.ids.txt") == [f"events.csv:line {i}" for i in range(2, 9)]


def test_fasta_records_keep_their_own_ids(text_model, tmp_path):
    ckpt, encoder = text_model
    src = tmp_path / "proteins.fasta.gz"
    with gzip.open(src, "wt") as f:
        f.write(">P1 first protein\nMKTAYIAK\nQRQISFVK\n>P2\nmvlsegew*\n>P3 third\nACDEFGHIKLMNPQRSTVWY\n")
    out = tmp_path / "emb.npy"
    assert embed(ckpt, src, "--out", out) == 0
    assert lines(tmp_path / "emb.npy.ids.txt") == ["P1", "P2", "P3"]
    expected = forward_on_texts(encoder, ["MKTAYIAKQRQISFVK", "MVLSEGEW", "ACDEFGHIKLMNPQRSTVWY"])
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)


def test_smiles_file_reads_the_first_column(text_model, tmp_path):
    ckpt, encoder = text_model
    src = tmp_path / "mols.smi"
    src.write_text("CCO ethanol\nc1ccccc1 benzene\nCC(=O)O\n")
    out = tmp_path / "emb.parquet"
    assert embed(ckpt, src, "--out", out) == 0
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == ["mols.smi:line 1", "mols.smi:line 2", "mols.smi:line 3"]
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got, forward_on_texts(encoder, ["CCO", "c1ccccc1", "CC(=O)O"]), atol=1e-5)


def test_npy_and_parquet_outputs_hold_the_same_vectors_and_ids(text_model, tmp_path):
    ckpt, _ = text_model
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(SENTENCES)))
    assert embed(ckpt, src, "--out", tmp_path / "e.npy", "--column", "text") == 0
    assert embed(ckpt, src, "--out", tmp_path / "e.parquet", "--column", "text") == 0
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.column_names == ["id", "embedding"]
    assert table.column("id").to_pylist() == lines(tmp_path / "e.npy.ids.txt")
    assert table.column("id").to_pylist() == [f"docs.jsonl:line {i}" for i in range(1, 5)]
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist(), dtype=np.float32),
                                  np.load(tmp_path / "e.npy"))
    assert not list(tmp_path.glob("*.tmp"))  # written under a temporary name, then renamed


def test_a_bad_row_stops_the_run_naming_its_line(table_model, tmp_path, capsys):
    ckpt, _ = table_model
    src = tmp_path / "events.csv"
    src.write_text("a,b\n1,2\n3,4\n5,n/a\n7,8\n")
    out = tmp_path / "emb.npy"
    assert embed(ckpt, src, "--out", out, "--features", "a,b") == 2
    err = capsys.readouterr().err
    assert "events.csv line 4: column 'b': a feature must be a number, got 'n/a'" in err
    assert "--on-error skip" in err
    assert not out.exists()


def test_skipped_bad_rows_are_logged_and_left_out(text_model, tmp_path, caplog):
    ckpt, encoder = text_model
    src = tmp_path / "t.csv"
    src.write_text("id,text\n1,first\n2,\n3,third\n")
    out = tmp_path / "emb.npy"
    with caplog.at_level(logging.WARNING):
        assert embed(ckpt, src, "--out", out, "--column", "text", "--on-error", "skip") == 0
    assert "skipped" in caplog.text and "t.csv line 3: column 'text' is empty" in caplog.text
    assert lines(tmp_path / "emb.npy.ids.txt") == ["t.csv:line 2", "t.csv:line 4"]
    np.testing.assert_allclose(np.load(out), forward_on_texts(encoder, ["first", "third"]), atol=1e-5)


@pytest.mark.parametrize("fmt", ["mds", "wds"])
@pytest.mark.parametrize("compressed", [False, True])
def test_shard_folders_are_read_once_in_index_order(text_model, tmp_path, fmt, compressed):
    ckpt, encoder = text_model
    docs = [f"document {i:03d} " + "y" * (i % 40) for i in range(60)]
    text.main(["--src", str(write_jsonl(tmp_path / "docs.jsonl", docs)), "--dst", str(tmp_path / fmt),
               "--format", fmt, "--window", "32", "--shard-samples", "7", "--shard-bytes", "1024", "--quiet",
               *(["--compression"] if compressed else [])])
    out = tmp_path / "emb.npy"
    assert embed(ckpt, tmp_path / fmt / "train", "--out", out, "--batch-size", "4") == 0
    windows = list(pack_windows(docs, 32))  # what data_prep wrote, in order
    batch = pad_ids(windows, TEXT_LEN)
    with torch.no_grad():
        expected = encoder(batch.inputs, batch.valid).states.mean(1).numpy()
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)
    ids = lines(tmp_path / "emb.npy.ids.txt")
    assert len(ids) == len(set(ids)) == len(windows)
    assert ids[0].endswith(":sample 0") and ids[1].endswith(":sample 1")
    assert len({i.rsplit(":", 1)[0] for i in ids}) > 1  # several shards, concatenated in index order


@pytest.mark.parametrize("name, content, options, message", [
    ("a.txt", "one\n", ["--pool", "query"], "a pretraining checkpoint has no trained readout query"),
    ("x.csv", "a,b\n1,2\n", ["--features", "a,b"], "the checkpoint's model reads bytes inputs"),
    ("x.csv", "a,b\n1,2\n", [], "give --column NAME (bytes) or --features a,b,c (numbers)"),
    ("a.txt", "one\n", ["--column", "text"], "--column / --features are for tables"),
])
def test_settings_that_cannot_work_are_refused_before_any_embedding(text_model, tmp_path, capsys, name, content,
                                                                     options, message):
    ckpt, _ = text_model
    src = tmp_path / name
    src.write_text(content)
    assert embed(ckpt, src, "--out", tmp_path / "e.npy", *options) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "e.npy").exists()


@pytest.mark.slow
def test_two_torchrun_processes_write_the_output_of_one(text_model, tmp_path):
    ckpt, _ = text_model
    src = tmp_path / "sentences.txt"
    src.write_text("\n".join([*SENTENCES, "", LONG, "seven", "eight"]) + "\n")  # 7 good rows: uneven slices
    common = [str(ckpt), str(src), "--on-error", "skip", "--batch-size", "2", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "one.npy")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "sma.embed", *common, "--out", str(tmp_path / "two.npy"), "--device", "cpu"]
    # From the repository root, so that `-m sma.embed` imports this checkout.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "two.npy"), np.load(tmp_path / "one.npy"), atol=1e-5)
    assert lines(tmp_path / "two.npy.ids.txt") == lines(tmp_path / "one.npy.ids.txt")
    assert len(lines(tmp_path / "two.npy.ids.txt")) == 7


def test_query_pooling_gives_a_finetuned_models_readout_features(tmp_path):
    from sma.model import build_finetune_model

    cfg = TrainConfig(model=tiny_perceiver(TEXT_LEN), masking=TEXT_MASKING)
    torch.manual_seed(1)
    model = build_finetune_model(cfg.model, num_outputs=3).eval()
    ckpt = tmp_path / "ft.pt"
    atomic_torch_save({"format": FORMAT, "config": to_dict(cfg), "model": model.state_dict(), "step": 5}, ckpt)
    src = tmp_path / "s.txt"
    src.write_text("\n".join(SENTENCES) + "\n")
    out = tmp_path / "q.npy"
    assert embed(ckpt, src, "--out", out, "--pool", "query") == 0
    with torch.no_grad():
        want = model.features(encode_batch(SENTENCES, max_len=TEXT_LEN, truncate=True)).numpy()
    np.testing.assert_allclose(np.load(out), want, atol=1e-5)
    assert embed(ckpt, src, "--out", tmp_path / "m.npy") == 0  # mean pooling of the fine-tuned encoder
    with torch.no_grad():
        np.testing.assert_allclose(np.load(tmp_path / "m.npy"), forward_on_texts(model.backbone, SENTENCES), atol=1e-5)
