"""Reader throughput: samples/s and MB/s reading MDS and tar shards from local disk and from S3 (a moto
server on loopback), for text windows (n = 1024) and HIGGS rows (28 x 1), with 1 and 2 DataLoader workers.

The shards are written first with the real ``data_prep`` commands from generated raw files (text: the
builtin docstring corpus repeated; HIGGS: random rows in UCI's CSV layout). Each measurement is one
full epoch through ``build_loader`` exactly as the trainer reads it (shuffled, collated, padded),
starting from a cold cache for S3, so worker start-up and downloads are included. MB/s counts the
sample payload (int16 ids or float32 values), not the padded batches.

    python bench/data.py [--text-windows 3000] [--higgs-rows 200000] [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import s3_env, start_moto_server  # noqa: E402

from data_prep import higgs, text  # noqa: E402
from sma.config import load_config  # noqa: E402
from sma.data import build_loader  # noqa: E402
from sma.data.builtin import _text_docs  # noqa: E402


def write_text_source(path: Path, windows: int) -> None:
    docs = list(_text_docs())
    with open(path, "w") as f:
        total = 0
        for copy in itertools.count():
            for d in docs:
                f.write(json.dumps({"text": f"[{copy}] {d}"}) + "\n")
                total += len(d)
            if total > windows * 1024:
                return


def write_higgs_source(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.integers(0, 2, (rows, 1)), rng.normal(0, 1, (rows, 28))], axis=1)
    with gzip.open(path, "wt", compresslevel=1) as f:
        np.savetxt(f, data, delimiter=",", fmt="%.8e")


def measure(fmt: str, url: str, corpus: str, workers: int, cache: Path) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    over = [f"data.format={fmt}", f"data.train_url={url}", f"data.num_workers={workers}", f"data.cache_dir={cache}",
            "data.shuffle_buffer=1000"]
    if corpus == "text":
        over += ["model.max_len=1024", "data.micro_batch_size=32"]
    else:
        over += ["model.modality=continuous", "model.encoder=transformer", "model.max_len=28", "model.d_embed=128",
                 "data.micro_batch_size=256"]
    cfg = load_config(None, over)
    t0 = time.perf_counter()
    loader = build_loader(cfg, "train", 0, 1)
    samples = payload = 0
    for batch in itertools.islice(iter(loader), len(loader)):
        valid = batch.valid.sum().item()
        samples += batch.valid.shape[0]
        payload += valid * (2 if corpus == "text" else 4 * batch.inputs.shape[-1])
    seconds = time.perf_counter() - t0
    return {"format": fmt, "where": "s3" if url.startswith("s3://") else "local", "corpus": corpus,
            "workers": workers, "samples": samples, "seconds": seconds, "samples_per_s": samples / seconds,
            "mb_per_s": payload / seconds / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text-windows", type=int, default=3000)
    ap.add_argument("--higgs-rows", type=int, default=200_000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="sma-bench-data-"))
    proc, endpoint = start_moto_server()
    os.environ.update(s3_env(endpoint))
    rows = []
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        write_text_source(work / "text.jsonl", args.text_windows)
        write_higgs_source(work / "HIGGS.csv.gz", args.higgs_rows)
        urls = {}
        for fmt in ("mds", "wds"):
            for where, base in (("local", str(work / "shards")), ("s3", "s3://bench")):
                common = ["--format", fmt, "--quiet"]
                text.main(["--src", str(work / "text.jsonl"), "--dst", f"{base}/text-{fmt}", "--window", "1024", *common])
                higgs.main(["--src", str(work / "HIGGS.csv.gz"), "--dst", f"{base}/higgs-{fmt}", "--test-rows", "1000",
                            *common])
                urls[(fmt, where, "text")] = f"{base}/text-{fmt}/train"
                urls[(fmt, where, "higgs")] = f"{base}/higgs-{fmt}/train"
        for (fmt, where, corpus), url in urls.items():
            for workers in (1, 2):
                rows.append(measure(fmt, url, corpus, workers, work / "cache"))
                print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    table = Table(title="Reader throughput, one epoch through build_loader (CPU)")
    for col in ("corpus", "format", "storage", "workers", "samples", "samples/s", "MB/s"):
        table.add_column(col, justify="right" if col in ("workers", "samples", "samples/s", "MB/s") else "left")
    for r in sorted(rows, key=lambda r: (r["corpus"], r["format"], r["where"], r["workers"])):
        table.add_row(r["corpus"], r["format"], r["where"], str(r["workers"]), str(r["samples"]),
                      f"{r['samples_per_s']:,.0f}", f"{r['mb_per_s']:.1f}")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
