"""Embedding export: one vector per input from a pretrained encoder, without masking.

    python -m sma.embed runs/text/checkpoints sentences.txt --out emb.npy         # + emb.npy.ids.txt
    python -m sma.embed text.pt proteins.fasta.gz --out emb.parquet --device cuda --batch-size 256
    python -m sma.embed chem.pt molecules.smi --out emb.npy
    python -m sma.embed chem.pt table.csv --column smiles --out emb.npy
    python -m sma.embed higgs.pt events.parquet --features f1,f2,f3 --stats shards/train/stats.json --out emb.npy
    python -m sma.embed text.pt shards/valid --out emb.npy                       # an MDS or tar shard folder
    torchrun --nproc_per_node 4 -m sma.embed text.pt big.fasta --out emb.npy

CHECKPOINT: a pretraining run's checkpoints folder (its latest), one stepNNNNNNNN folder, or an exported .pt;
or a fine-tuning trial's checkpoints folder (runs/ft_x/lr0.0001-seed0/checkpoints).
INPUT, by its name: text lines (.txt: one input per line), FASTA (.fasta / .fa / .faa), SMILES (.smi /
.smiles: the first column), a table (.csv / .tsv / .jsonl / .parquet, with --column NAME for a bytes column
or --features a,b,c for numeric columns as continuous tokens), any of them .gz compressed, or a data_prep
split folder of MDS or tar shards (read in the order of its index, every sample once).
Ids: "<file>:line N" ("row N" for parquet), a FASTA record's own id (the header's first word), and
"<shard>:sample K" for shards.

Pooling: ``mean``, the mean of the encoder's final states over the latents (Perceiver) or the valid tokens
(Transformer); ``query``, a fine-tuned model's readout query after its cross-attention to those states (the
features its output layer reads). A pretraining checkpoint has no trained query, so ``query`` needs a
fine-tuning checkpoint.
Byte inputs longer than the model's max_len are cut to fit (counted in the log); a bad row (empty, or a
feature that is no number) stops the run naming its line, or with ``--on-error skip`` is left out, logged.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sma.checkpoint import CheckpointFormatError
from sma.config import ConfigError
from sma.data.collate import Collate, collate_for_shards
from sma.data.samples import Sample, check_sample
from sma.data.storage import filesystem, join, open_url, read_json
from sma.inputs import InputError, encode
from sma.model import EncoderOutput, SMAEncoder, SMAFinetuneModel, build_finetune_model
from sma.train.env import DistEnv

log = logging.getLogger("sma.embed")

POOLS = ("mean", "query")
OUTPUTS = (".npy", ".parquet")
MAX_REPORTED = 20  # skipped rows logged one by one (all are counted)

# (where, id, value): where is "<file> line N" for messages; value is the input (bytes, a float32 (n, 1)
# array, or a shard sample) or the exception that makes the row bad.
Record = tuple[str, str, Any]


# ---- inputs ---------------------------------------------------------------------------------------------

@dataclass
class Inputs:
    """What to embed, in input order: an id per input, and ``read(start, stop)`` yielding the inputs of
    that range (bytes, float32 (n, d_raw) arrays, or shard samples)."""

    ids: list[str]
    read: Callable[[int, int], Iterator[Any]]
    collate: Collate  # pads to max_len (and standardizes continuous values when given statistics)
    skipped: int = 0  # bad rows left out (--on-error skip)

    def __len__(self) -> int:
        return len(self.ids)


def in_memory(ids: list[str], values: list[Any], collate: Collate, skipped: int = 0) -> Inputs:
    return Inputs(ids, lambda start, stop: iter(values[start:stop]), collate, skipped)


def input_kind(url: str) -> str:
    """``text``, ``fasta``, ``smiles``, ``table`` (by the file's suffix) or ``mds`` / ``wds`` (a shard folder)."""
    from sma.finetune.tables import table_format

    fs, path = filesystem(url)
    if fs.isdir(path):
        for index, kind in (("index.json", "mds"), ("shards.json", "wds")):
            if fs.exists(join(path, index)):
                return kind
        raise ConfigError(f"INPUT: {url} is a folder without index.json (MDS) or shards.json (tar shards); give "
                          "one split folder of a data_prep output (e.g. <dst>/valid)")
    if not fs.exists(path):
        raise ConfigError(f"INPUT: {url} does not exist")
    name = url.lower().rstrip("/")
    for suffix in (".gz", ".bz2", ".xz"):
        name = name.removesuffix(suffix)
    for suffixes, kind in (((".txt", ".text"), "text"), ((".fasta", ".fa", ".faa"), "fasta"),
                           ((".smi", ".smiles"), "smiles")):
        if name.endswith(suffixes):
            return kind
    try:
        table_format(url, key="INPUT")
    except ConfigError:
        raise ConfigError(f"INPUT: cannot tell the format of {url} from its name; expected .txt, .fasta/.fa/.faa, "
                          ".smi, .csv/.tsv/.jsonl/.parquet (optionally .gz), or an MDS / tar shard folder") from None
    return "table"


def basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def text_records(url: str) -> Iterator[Record]:
    """One input per line: the line's bytes as they are."""
    from data_prep.sources import numbered_lines

    for where, line in numbered_lines(url):
        yield f"{url} {where}", f"{basename(url)}:{where}", line if line.strip() else InputError("empty line")


def smiles_records(url: str) -> Iterator[Record]:
    """The first whitespace-separated column of each line (``.smi`` files put a name after the SMILES)."""
    from data_prep.sources import numbered_lines

    for where, line in numbered_lines(url):
        fields = line.split()
        yield f"{url} {where}", f"{basename(url)}:{where}", fields[0] if fields else InputError("empty line")


def fasta_inputs(url: str) -> Iterator[Record]:
    """FASTA entries read as data_prep.pfam reads them (residues upper-cased, a final ``*`` stripped); the
    id is the header's first word."""
    from data_prep.pfam import fasta_records, protein

    for where, (_, value) in fasta_records(url, ""):
        loc = f"{url} {where}"
        if isinstance(value, Exception):
            yield loc, "", value
            continue
        header, seq = value
        words = header.split(maxsplit=1)
        rid = words[0].decode("utf-8", errors="replace") if words else f"{basename(url)}:{where}"
        residues = protein(seq)
        yield loc, rid, residues.encode() if residues else InputError(f"entry {rid!r} has no residues")


def table_records(url: str, column: str, features: list[str], skip: bool) -> Iterator[Record]:
    """``column``'s cells as bytes, or the ``features`` cells of each row as a float32 (F, 1) sample."""
    from sma.finetune.table_task import number
    from sma.finetune.tables import is_missing, read_table

    table = read_table(url, key="INPUT", bad_rows="drop" if skip else "raise")
    for reason, n in table.dropped.items():
        log.warning("%s: %d row(s) left out: %s", url, n, reason)
    if column:
        i = table.index(column, "--column")
    else:
        idx = [table.index(c, "--features") for c in features]
    for r, values in enumerate(table.rows):
        value: Any
        if column:
            cell = values[i]
            if is_missing(cell):
                value = InputError(f"column {column!r} is empty")
            else:
                value = cell if isinstance(cell, bytes) else str(cell).encode()
        else:
            try:
                value = np.array([[number(values[j], f"column {c!r}", "a feature")]
                                  for j, c in zip(idx, features)], dtype=np.float32)
            except InputError as e:
                value = e
        yield table.location(r), table.row_id(r), value


def collect(records: Iterable[Record], on_error: str, collate: Collate) -> Inputs:
    """Keep the good rows; a bad one stops the run (naming its line) or, with ``skip``, is logged and left out."""
    ids: list[str] = []
    values: list[Any] = []
    skipped = 0
    for where, rid, value in records:
        if not isinstance(value, Exception):
            ids.append(rid)
            values.append(value)
            continue
        if on_error == "stop":
            raise InputError(f"{where}: {value}; fix the row, or pass --on-error skip to leave such rows out")
        skipped += 1
        if skipped <= MAX_REPORTED:
            log.warning("skipped %s: %s", where, value)
    if skipped > MAX_REPORTED:
        log.warning("skipped %d more bad row(s)", skipped - MAX_REPORTED)
    return in_memory(ids, values, collate, skipped)


# ---- shards (data_prep's output) -------------------------------------------------------------------------

def shard_ranges(counts: list[int], start: int, stop: int) -> Iterator[tuple[int, int, int]]:
    """``(shard, first, end)``: the part of each shard, by sample index within it, that ``[start, stop)`` of
    the concatenated samples covers."""
    offset = 0
    for s, n in enumerate(counts):
        lo, hi = max(start, offset), min(stop, offset + n)
        if lo < hi:
            yield s, lo - offset, hi - offset
        offset += n


def shard_ids(names: list[str], counts: list[int]) -> list[str]:
    return [f"{name}:sample {k}" for name, n in zip(names, counts) for k in range(n)]


def mds_inputs(url: str, max_len: int) -> Inputs:
    """An MDS split folder, shard by shard in ``index.json``'s order. Each shard file is read whole (local or
    remote), checked against the size and sha1 the index records, and its samples decoded by streaming's
    reader; no shared memory, no cache folder, no shuffling."""
    from sma.data.streaming_import import import_streaming

    import_streaming()
    from streaming.base.compression import decompress
    from streaming.base.format import reader_from_json

    readers = [reader_from_json(url, None, shard) for shard in read_json(join(url, "index.json"))["shards"]]
    names = [r.raw_data.basename for r in readers]
    counts = [r.samples for r in readers]

    def shard_bytes(reader: Any) -> bytes:
        info = reader.zip_data or reader.raw_data  # data_prep keeps only the compressed file when it compresses
        with open_url(join(url, info.basename), "rb") as f:
            data = f.read()
        expected = (info.hashes or {}).get("sha1")
        if len(data) != info.bytes or (expected and hashlib.sha1(data).hexdigest() != expected):
            raise InputError(f"damaged MDS shard {join(url, info.basename)}: its size or sha1 differs from "
                             f"{join(url, 'index.json')}; re-run the data_prep command that wrote it")
        return decompress(reader.compression, data) if reader.zip_data else data

    def read(start: int, stop: int) -> Iterator[Sample]:
        for s, first, end in shard_ranges(counts, start, stop):
            reader = readers[s]
            data = shard_bytes(reader)
            # MDS layout: sample count (uint32), then count + 1 uint32 offsets, then the samples.
            offsets = np.frombuffer(data, np.uint32, count=reader.samples + 1, offset=4)
            for k in range(first, end):
                where = f"{join(url, names[s])} sample {k}"
                yield check_sample(reader.decode_sample(data[offsets[k]:offsets[k + 1]]), where)

    return Inputs(shard_ids(names, counts), read, collate_for_shards(max_len, url))


def wds_inputs(url: str, max_len: int) -> Inputs:
    """A tar shard split folder, in ``shards.json``'s order, through the trainer's reader without shuffling
    (shards are checked against their recorded sha256 when the index has one for each)."""
    from sma.data.epochs import Plan
    from sma.data.wds import TarStream, read_shard_index

    shards = read_shard_index(url)
    counts = [s["samples"] for s in shards]
    checked = all(s["sha256"] and s["bytes"] is not None for s in shards)
    stream = TarStream(shards, Plan(sum(counts), 1, 1, 1), 0, None, seed=0, shuffle=False, shuffle_buffer=0,
                       endpoint_url="", validate_hash=checked)

    def read(start: int, stop: int) -> Iterator[Sample]:
        return stream.role_samples(0, 0, start, stop, 0)

    return Inputs(shard_ids([basename(s["url"]) for s in shards], counts), read, collate_for_shards(max_len, url))


def open_inputs(url: str, *, column: str = "", features: list[str] | None = None, on_error: str = "stop",
                stats: str = "", modality: str = "bytes", max_len: int = 1024) -> Inputs:
    """The inputs of ``url`` for a model of ``modality`` and ``max_len``. Settings that cannot work are a
    ``ConfigError`` naming the option; a bad row an ``InputError`` naming its line (``on_error="stop"``)."""
    features = features or []
    kind = input_kind(url)
    if kind in ("mds", "wds"):
        if column or features or stats:
            raise ConfigError("--column / --features / --stats are for tables; shard folders hold their own "
                              "samples (and stats.json)")
        return mds_inputs(url, max_len) if kind == "mds" else wds_inputs(url, max_len)
    if kind == "table" and bool(column) == bool(features):
        raise ConfigError(f"INPUT: {url} is a table: give --column NAME (bytes) or --features a,b,c (numbers)")
    if kind != "table" and (column or features):
        raise ConfigError(f"--column / --features are for tables (.csv, .tsv, .jsonl, .parquet), not {url}")
    continuous = bool(features)
    if continuous != (modality == "continuous"):
        what = "numeric --features (continuous tokens)" if continuous else "bytes"
        raise ConfigError(f"the checkpoint's model reads {modality} inputs; {url} gives {what}")
    if continuous and len(features) > max_len:
        raise ConfigError(f"--features: {len(features)} features, the model's max_len is {max_len}")
    if stats and not continuous:
        raise ConfigError("--stats standardizes --features values; it has no use for bytes inputs")
    mean = std = None
    if stats:
        saved = read_json(stats)
        mean, std = np.asarray(saved["mean"]), np.asarray(saved["std"])
        if mean.size != len(features):
            raise ConfigError(f"--stats: {stats} holds statistics for {mean.size} features, --features names "
                              f"{len(features)}")
    collate = Collate(max_len, mean, std)
    records = {"text": lambda: text_records(url), "smiles": lambda: smiles_records(url),
               "fasta": lambda: fasta_inputs(url),
               "table": lambda: table_records(url, column, features, on_error == "skip")}[kind]()
    return collect(records, on_error, collate)


def model_sample(value: Any, rid: str, max_len: int, discrete: bool) -> tuple[Sample, bool]:
    """The sample the model reads for one input, and whether it was cut to ``max_len`` (bytes only)."""
    if isinstance(value, np.ndarray):
        value = {"x": value}
    is_bytes = isinstance(value, bytes) or "ids" in value
    if is_bytes != discrete:
        raise InputError(f"{rid}: holds {'bytes' if is_bytes else 'continuous values'}, the checkpoint's model "
                         f"reads {'bytes' if discrete else 'continuous values'}")
    if isinstance(value, bytes):
        return {"ids": encode(value, max_len=max_len, truncate=True)}, len(value) + 1 > max_len
    if "ids" in value:
        return {"ids": value["ids"][:max_len]}, value["ids"].size > max_len
    if value["x"].shape[0] > max_len:
        raise InputError(f"{rid}: {value['x'].shape[0]} continuous tokens, the model's max_len is {max_len}")
    return value, False


# ---- the model ------------------------------------------------------------------------------------------

def mean_pool(enc: EncoderOutput) -> torch.Tensor:
    """Mean of the final states over the valid ones: states (B, L, D) -> (B, D). Perceiver: every latent;
    Transformer: the input's tokens."""
    if enc.states_valid is None:
        return enc.states.mean(1)
    w = enc.states_valid[..., None].to(enc.states.dtype)  # (B, L, 1)
    return (enc.states * w).sum(1) / w.sum(1)


@torch.no_grad()
def embed_range(model: SMAEncoder | SMAFinetuneModel, inputs: Inputs, start: int, stop: int, batch_size: int,
                device: torch.device, progress: bool = False) -> tuple[np.ndarray, int]:
    """float32 (stop - start, D) vectors of inputs ``[start, stop)``, and how many were cut to max_len.
    ``model``: an encoder (mean pooling) or a fine-tuned model (its readout query's features)."""
    query = isinstance(model, SMAFinetuneModel)
    encoder = model.backbone if query else model
    max_len = encoder.embed.position.shape[0]
    discrete = encoder.embed.discrete
    out: list[np.ndarray] = [np.zeros((0, encoder.encoder.width), np.float32)]
    truncated = 0
    pending: list[Sample] = []

    def flush() -> None:
        batch = inputs.collate(pending).to(device)
        vectors = model.features(batch) if query else mean_pool(encoder(batch.inputs, batch.valid))
        out.append(vectors.float().cpu().numpy())
        bar.update(len(pending))
        pending.clear()

    with tqdm(total=stop - start, disable=not progress, unit="input", desc="embedding", dynamic_ncols=True) as bar:
        for rid, value in zip(inputs.ids[start:stop], inputs.read(start, stop), strict=True):
            sample, cut = model_sample(value, rid, max_len, discrete)
            truncated += cut
            pending.append(sample)
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
    return np.concatenate(out), truncated


def load_encoder(checkpoint: str, device: torch.device, pool: str = "mean") -> tuple[SMAEncoder | SMAFinetuneModel, Any]:
    """The encoder (eval mode, on ``device``) of a pretraining or fine-tuning checkpoint, and its run's
    config; with ``pool="query"``, the whole fine-tuned model, whose readout query gives the vectors."""
    from sma.checkpoint import load_pretrained_weights

    weights, cfg = load_pretrained_weights(checkpoint)
    finetuned = "query" in weights  # a fine-tuning trial's checkpoint: encoder, query and head
    if pool == "query":
        if not finetuned:
            raise ConfigError("--pool query: a pretraining checkpoint has no trained readout query (only a "
                              "fine-tuned model has one: pass a fine-tuning trial's checkpoints folder); use --pool mean")
        model = build_finetune_model(cfg.model, weights["head.out.weight"].shape[0])
        model.load_state_dict(weights, strict=True)
        return model.to(device).eval(), cfg
    encoder = SMAEncoder(cfg.model)
    encoder.load_state_dict({k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")},
                            strict=True)
    return encoder.to(device).eval(), cfg


# ---- output ---------------------------------------------------------------------------------------------

def write_embeddings(out: Path, ids: list[str], vectors: np.ndarray) -> list[Path]:
    """``.npy`` (float32 (N, D)) plus ``<out>.ids.txt`` (one id a line), or ``.parquet`` (columns ``id`` and
    ``embedding``), each written to a temporary name and renamed. Returns the files written."""
    from sma.train.checkpointing import atomic_write, atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if out.suffix == ".npy":
        ids_file = out.with_name(out.name + ".ids.txt")

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append .npy to the temporary name
                np.save(f, vectors, allow_pickle=False)
        atomic_write(out, save)
        atomic_write_text(ids_file, "".join(f"{i}\n" for i in ids))
        return [out, ids_file]
    import pyarrow as pa
    import pyarrow.parquet as pq

    offsets = pa.array(np.arange(len(ids) + 1, dtype=np.int32) * vectors.shape[1])
    embedding = pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))
    table = pa.table({"id": pa.array(ids, pa.string()), "embedding": embedding})
    atomic_write(out, lambda tmp: pq.write_table(table, tmp))
    return [out]


# ---- processes ------------------------------------------------------------------------------------------

def join_processes(device: str) -> DistEnv:
    """This process's place among the ranks torchrun started (one rank without torchrun); joins their group
    (gloo on CPU, NCCL on GPU) when there are several."""
    import torch.distributed as dist

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank, world, local_rank, dev)


def contiguous_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s inputs: contiguous slices, sizes differing by at most one."""
    return n * rank // world_size, n * (rank + 1) // world_size


class EmbedError(RuntimeError):
    """Another rank failed; its message is in this one."""


def gather_to_main(env: DistEnv, work: Callable[[], Any]) -> list[Any] | None:
    """Run ``work`` on every rank; rank 0 gets every rank's result, in rank order (the others get None).
    A failure on any rank fails every rank (no rank is left waiting for another that stopped)."""
    if env.world_size == 1:
        return [work()]
    import torch.distributed as dist

    result, failure = None, None
    try:
        result = work()
    except Exception as e:  # reported to the other ranks first, then raised here
        failure = e
    failures: list[Any] = [None] * env.world_size
    dist.all_gather_object(failures, None if failure is None else f"rank {env.rank}: {failure}")
    if failure is not None:
        raise failure
    if any(failures):
        raise EmbedError("; ".join(f for f in failures if f))
    gathered: list[Any] | None = [None] * env.world_size if env.is_main else None
    dist.gather_object(result, gathered, dst=0)
    return gathered


# ---- command line ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sma.embed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a run's checkpoints folder, one stepNNNNNNNN folder, or an exported .pt")
    p.add_argument("input", help="a .txt / .fasta / .smi / .csv / .tsv / .jsonl / .parquet file, or a shard folder")
    p.add_argument("--out", required=True, help="output: .npy (with <out>.ids.txt) or .parquet")
    p.add_argument("--column", default="", help="a table's bytes column (text, SMILES, sequence)")
    p.add_argument("--features", default="", help="a table's numeric columns, comma-separated: continuous tokens")
    p.add_argument("--stats", default="",
                   help="stats.json of the pretraining shards: standardize --features as pretraining did")
    p.add_argument("--pool", choices=POOLS, default="mean",
                   help="mean (default): mean of the final latent / token states; query: a fine-tuned readout "
                        "query (not in pretraining checkpoints)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 (default: cuda if available; under torchrun "
                                                "each rank takes cuda:LOCAL_RANK)")
    p.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                   help="a bad row (empty, a feature that is no number) stops the run (default) or is skipped")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if Path(args.out).suffix not in OUTPUTS:
        p.error(f"--out must end in {' or '.join(OUTPUTS)}, got {args.out}")
    return args


def run(args: argparse.Namespace, env: DistEnv) -> list[Path] | None:
    """Embed ``args.input`` on every rank's slice; rank 0 writes the output and returns its files."""
    features = [c.strip() for c in args.features.split(",") if c.strip()]
    state: dict[str, Any] = {}

    def work() -> tuple[np.ndarray, int]:
        encoder, cfg = load_encoder(args.checkpoint, env.device, args.pool)
        inputs = open_inputs(args.input, column=args.column, features=features, on_error=args.on_error,
                             stats=args.stats, modality=cfg.model.modality, max_len=cfg.model.max_len)
        if len(inputs) == 0:
            skipped = f" ({inputs.skipped} bad row(s) skipped)" if inputs.skipped else ""
            raise InputError(f"{args.input}: no inputs to embed{skipped}")
        state.update(inputs=inputs, max_len=cfg.model.max_len)
        start, stop = contiguous_range(len(inputs), env.rank, env.world_size)
        return embed_range(encoder, inputs, start, stop, args.batch_size, env.device,
                           progress=env.is_main and not args.quiet)

    parts = gather_to_main(env, work)
    if parts is None:
        return None
    inputs: Inputs = state["inputs"]
    vectors = np.concatenate([v for v, _ in parts])
    truncated = sum(t for _, t in parts)
    if truncated:
        log.warning("%d input(s) longer than the model's max_len=%d were cut to fit", truncated, state["max_len"])
    files = write_embeddings(Path(args.out), inputs.ids, vectors)
    log.info("%d inputs -> %s vectors (%s, pool %s)%s; wrote %s", len(inputs), vectors.shape[1],
             "1 process" if env.world_size == 1 else f"{env.world_size} processes", args.pool,
             f"; {inputs.skipped} bad row(s) skipped" if inputs.skipped else "", ", ".join(map(str, files)))
    return files


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = join_processes(args.device)
    logging.basicConfig(level=logging.INFO if env.is_main else logging.ERROR, format="%(name)s: %(message)s")
    try:
        run(args, env)
    except (ConfigError, InputError, CheckpointFormatError, FileNotFoundError, EmbedError) as e:
        if env.is_main:
            print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    from sma.train.env import prepare_environment

    prepare_environment()  # launcher defaults and CPU threads per rank, as for training
    sys.exit(main())
