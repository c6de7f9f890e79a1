"""data_prep round trips: small files in exactly the formats users download, written to MDS and tar
shards, read back through the trainer's readers. The raw-format writers here are reused by the other
data tests."""

from __future__ import annotations

import bz2
import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from sma.config import load_config
from sma.data import build_loader
from sma.data.samples import pack_windows
from sma.inputs import decode

FORMATS = ["mds", "wds"]
AMINO = "ACDEFGHIKLMNPQRSTVWY"

pytestmark = pytest.mark.usefixtures("streaming_shm_cleanup")


# ---- raw formats -----------------------------------------------------------------------------------

def proteins(n: int, seed: int = 0, lo: int = 30, hi: int = 140) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(AMINO), int(rng.integers(lo, hi)))) for _ in range(n)]


def write_tape_lmdb(path: Path, seqs: list[str]) -> Path:
    import lmdb

    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.put(b"num_examples", pickle.dumps(len(seqs)))
        for i, s in enumerate(seqs):
            rec = {"primary": s, "protein_length": len(s), "clan": i % 7, "family": i % 11}
            txn.put(str(i).encode(), pickle.dumps(rec))
    env.close()
    return path


def write_tape_json(path: Path, seqs: list[str]) -> Path:
    recs = [{"primary": s, "protein_length": len(s), "clan": 1, "family": 2, "id": str(i)} for i, s in enumerate(seqs)]
    path.write_text(json.dumps(recs))
    return path


def write_fasta_gz(path: Path, seqs: list[str]) -> Path:
    with gzip.open(path, "wt") as f:
        for i, s in enumerate(seqs):
            f.write(f">A0A{i:03d}_HUMAN/1-{len(s)} A0A{i:03d}.1 PF00001.22;7tm_1;\n")
            for j in range(0, len(s), 60):  # Pfam-A.fasta wraps lines at 60 residues
                f.write(s[j : j + 60] + "\n")
    return path


WIKI_PAGES = [
    ("Anarchism", "0", None, "'''Anarchism''' is a [[political philosophy]] and [[Political movement|movement]]."
     "{{Infobox ideology|name=x}}\n\n== History ==\nIt began <ref>a source</ref> long ago."),
    ("AccessibleComputing", "0", "Computer accessibility", "#REDIRECT [[Computer accessibility]]"),
    ("Talk:Anarchism", "1", None, "A talk page, not an article."),
    ("Albedo", "0", None, "'''Albedo''' is the measure of the [[diffuse reflection]] of sunlight."),
]
WIKI_TEXTS = ["Anarchism is a political philosophy and movement.\n\nHistory\nIt began long ago.",
              "Albedo is the measure of the diffuse reflection of sunlight."]


def write_mediawiki_bz2(path: Path, pages=WIKI_PAGES) -> Path:
    from xml.sax.saxutils import escape

    ns = "http://www.mediawiki.org/xml/export-0.10/"
    out = [f'<mediawiki xmlns="{ns}" version="0.10" xml:lang="en"><siteinfo><sitename>Wikipedia</sitename></siteinfo>']
    for i, (title, page_ns, redirect, text) in enumerate(pages):
        red = f'<redirect title="{escape(redirect)}" />' if redirect else ""
        out.append(f"<page><title>{escape(title)}</title><ns>{page_ns}</ns><id>{i + 10}</id>{red}<revision>"
                   f"<id>{i + 100}</id><model>wikitext</model><format>text/x-wiki</format>"
                   f'<text bytes="{len(text)}" xml:space="preserve">{escape(text)}</text></revision></page>')
    out.append("</mediawiki>")
    path.write_bytes(bz2.compress("\n".join(out).encode()))
    return path


def write_parquet(path: Path, texts: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "title": ["t"] * len(texts),
                             "text": texts}), path, row_group_size=3)
    return path


def write_jsonl(path: Path, texts: list[str]) -> Path:
    with open(path, "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": str(i), "revid": "1", "url": f"https://x/{i}", "title": f"T{i}", "text": t}) + "\n")
    return path


def write_books(path: Path, sentences: list[str]) -> Path:
    path.write_text("\n".join(sentences) + "\n")
    return path


def higgs_rows(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 29)``: label, then 28 features, like HIGGS.csv."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.integers(0, 2, (n, 1)).astype(float), rng.normal(1.0, 0.5, (n, 28))], axis=1)


def write_higgs_csv_gz(path: Path, rows: np.ndarray) -> Path:
    with gzip.open(path, "wt") as f:
        for r in rows:
            f.write(",".join(f"{v:.18e}" for v in r) + "\n")
    return path


def write_higgs_small(folder: Path, sizes=(40, 12, 16)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (split, n) in enumerate(zip(("train", "val", "test"), sizes)):
        rows = higgs_rows(n, seed)
        np.save(folder / f"N_{split}.npy", rows[:, 1:].astype(np.float32))
        np.save(folder / f"y_{split}.npy", rows[:, 0].astype(np.int64))
    (folder / "info.json").write_text(json.dumps({"name": "higgs-small", "task_type": "binclass",
                                                  "n_num_features": 28, "train_size": sizes[0],
                                                  "val_size": sizes[1], "test_size": sizes[2]}))
    return folder


SMILES = ["CC1=CC(=O)C=CC1=O", "OC1=C(Cl)C=C(C=C1[N+]([O-])=O)[N+]([O-])=O", "[O-][N+](=O)C1=CNC(=N)S1",
          "NC1=CC2=C(C=C1)C(=O)C3=C(C=CC=C3)C2=O", "CCO", "c1ccccc1O"] * 5


def write_smiles(path: Path, smiles: list[str] = SMILES) -> Path:
    path.write_text("\n".join(smiles) + "\n")
    return path


# ---- reading back ----------------------------------------------------------------------------------

def read_back(url: str, fmt: str, max_len: int, continuous: bool = False, **data) -> list:
    """Every sample of a split, in stored order: decoded text, or ``(x (n, d), y)`` pairs."""
    over = [f"data.format={fmt}", f"data.train_url={url}", f"data.eval_url={url}", f"model.max_len={max_len}",
            "data.micro_batch_size=1", f"run_dir={Path(url).parent if '://' not in url else '/tmp'}/run"]
    over += ["model.num_latents=16", *(["model.modality=continuous", "model.encoder=transformer",
                                        "model.d_embed=64"] if continuous else [])]
    over += [f"data.{k}={v}" for k, v in data.items()]
    out = []
    for b in build_loader(load_config(None, over), "eval", 0, 1):
        if continuous:
            out.append((b.inputs[0][b.valid[0]].numpy(), float(b.targets[0])))
        else:
            out.append(decode(b.inputs[0][b.valid[0]]))
    return out


def windows_text(docs: list[str], window: int, pack: bool = True) -> list[str]:
    return [decode(w) for w in pack_windows(docs, window, pack)]


# ---- round trips -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_pfam_tape_lmdb_json_and_fasta_round_trip(tmp_path, fmt):
    from data_prep import pfam

    train, valid, fasta = proteins(30, 0), proteins(12, 1), proteins(10, 2, hi=300)
    write_tape_lmdb(tmp_path / "pfam_train.lmdb", train)
    write_tape_json(tmp_path / "pfam_valid.json", valid)
    write_fasta_gz(tmp_path / "Pfam-A.fasta.gz", fasta)
    dst = tmp_path / "out"
    manifest = pfam.main(["--src", str(tmp_path / "pfam_*"), str(tmp_path / "Pfam-A.fasta.gz"), "--dst", str(dst),
                          "--format", fmt, "--window", "128", "--quiet"])
    keep = lambda seqs: [s for s in seqs if len(s) > 50]  # noqa: E731 - TAPE's "longer than 50" rule
    assert read_back(f"{dst}/train", fmt, 128) == windows_text(keep(train) + keep(fasta), 128, pack=False)
    assert read_back(f"{dst}/valid", fmt, 128) == windows_text(keep(valid), 128, pack=False)
    assert manifest["splits"]["valid"]["samples"] == len(windows_text(keep(valid), 128, pack=False))
    assert [p["part"]["source"].rsplit("/", 1)[1] for p in manifest["splits"]["train"]["parts"]] == [
        "pfam_train.lmdb", "Pfam-A.fasta.gz"]  # parts follow the --src order


@pytest.mark.parametrize("fmt", FORMATS)
def test_text_wikipedia_xml_parquet_jsonl_and_books_round_trip(tmp_path, fmt):
    from data_prep import text

    docs = [f"Document {i}: " + "words and more words. " * (i % 9) for i in range(12)]
    books = [f"Sentence {i} of the book." for i in range(40)]
    srcs = [write_mediawiki_bz2(tmp_path / "enwiki-20240101-pages-articles1.xml.bz2"),
            write_parquet(tmp_path / "wiki.parquet", docs[:6]), write_jsonl(tmp_path / "wiki.jsonl", docs[6:]),
            write_books(tmp_path / "book.txt", books)]
    dst = tmp_path / "out"
    text.main(["--src", *map(str, srcs), "--dst", str(dst), "--format", fmt, "--window", "64", "--workers", "2",
               "--quiet"])
    got = read_back(f"{dst}/train", fmt, 64)
    # parts follow the --src order: xml, parquet, jsonl, plain text
    expected = (windows_text(WIKI_TEXTS, 64) + windows_text(docs[:6], 64) + windows_text(docs[6:], 64)
                + windows_text(["\n".join(books)], 64))
    assert got == expected
    assert not any("[[" in g or "{{" in g or "REDIRECT" in g or "talk page" in g for g in got)


def test_wikiextractor_json_output_without_a_suffix_is_read_as_json_lines(tmp_path):
    from data_prep import text

    docs = [f"Article {i}. " + "Some prose. " * (i % 5) for i in range(9)]
    out = tmp_path / "extracted" / "AA"
    out.mkdir(parents=True)
    for n, chunk in enumerate((docs[:5], docs[5:])):  # what `wikiextractor --json` writes: wiki_00, wiki_01
        (out / f"wiki_{n:02d}").write_text("".join(
            json.dumps({"id": str(i), "url": f"https://en.wikipedia.org/wiki?curid={i}", "title": f"T{i}",
                        "text": d}) + "\n" for i, d in enumerate(chunk)))
    common = ["--src", str(tmp_path / "extracted" / "*" / "wiki_*"), "--format", "wds", "--window", "64", "--quiet"]
    text.main([*common, "--dst", str(tmp_path / "json"), "--input-format", "jsonl"])
    assert read_back(f"{tmp_path}/json/train", "wds", 64) == windows_text(docs[:5], 64) + windows_text(docs[5:], 64)
    text.main([*common, "--dst", str(tmp_path / "auto")])  # by name alone it is plain text: JSON kept as text
    assert read_back(f"{tmp_path}/auto/train", "wds", 64)[0].startswith('{"id": "0"')


@pytest.mark.parametrize("fmt", FORMATS)
def test_higgs_csv_split_and_train_statistics_round_trip(tmp_path, fmt):
    from data_prep import higgs

    rows = higgs_rows(50)
    src = write_higgs_csv_gz(tmp_path / "HIGGS.csv.gz", rows)
    dst = tmp_path / "out"
    manifest = higgs.main(["--src", str(src), "--dst", str(dst), "--format", fmt, "--test-rows", "10", "--quiet"])
    mean, std = rows[:40, 1:].mean(0), rows[:40, 1:].std(0)
    assert np.allclose(manifest["stats"]["mean"], mean[:, None]) and np.allclose(manifest["stats"]["std"], std[:, None])
    for split, sl in (("train", slice(0, 40)), ("test", slice(40, 50))):
        got = read_back(f"{dst}/{split}", fmt, 28, continuous=True)
        assert len(got) == sl.stop - sl.start
        x = np.stack([g[0][:, 0] for g in got])
        assert np.allclose(x, (rows[sl, 1:] - mean) / std, atol=1e-5)  # standardized with train statistics
        assert [g[1] for g in got] == rows[sl, 0].tolist()


@pytest.mark.parametrize("fmt", FORMATS)
def test_higgs_small_npy_splits_round_trip(tmp_path, fmt):
    from data_prep import higgs

    src = write_higgs_small(tmp_path / "higgs_small")
    dst = tmp_path / "out"
    manifest = higgs.main(["--src", str(src), "--dst", str(dst), "--format", fmt, "--quiet"])
    assert {s: v["samples"] for s, v in manifest["splits"].items()} == {"train": 40, "val": 12, "test": 16}
    assert manifest["source_info"]["name"] == "higgs-small"
    train = np.load(src / "N_train.npy")
    got = read_back(f"{dst}/val", fmt, 28, continuous=True)
    val = np.load(src / "N_val.npy")
    assert np.allclose(np.stack([g[0][:, 0] for g in got]), (val - train.mean(0)) / train.std(0), atol=1e-4)
    assert [g[1] for g in got] == np.load(src / "y_val.npy").tolist()


@pytest.mark.parametrize("fmt", FORMATS)
def test_guacamol_smiles_are_packed_with_sep_round_trip(tmp_path, fmt):
    from data_prep import smiles

    src = write_smiles(tmp_path / "guacamol_v1_valid.smiles")
    dst = tmp_path / "out"
    manifest = smiles.main(["--src", str(src), "--dst", str(dst), "--format", fmt, "--window", "64", "--quiet"])
    assert list(manifest["splits"]) == ["valid"]
    got = read_back(f"{dst}/valid", fmt, 64)
    assert got == windows_text(SMILES, 64)
    assert all(len(g.encode()) <= 64 for g in got) and "\t".join(got).split("\t") == SMILES
