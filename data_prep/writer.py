"""The one shard writer behind every ``data_prep.<corpus>`` command.

Work is cut into *parts*: the samples of one input file for one split. Parts run in parallel worker
processes. Each part is written into a local staging folder (``data_prep.shards``), checksummed,
uploaded to the destination with fsspec, and only then recorded by a small ``part-NNNNN.json`` next to
its shards. Readers never look at parts directly: they read the split index (MDS ``index.json`` or
``shards.json``) and ``manifest.json``, which are written last, after every part is complete. So an
interrupted run leaves nothing a reader would accept, and a re-run skips every part whose record
exists, matches this run's settings and whose files still have the recorded checksums.

Destination layout::

    <dst>/manifest.json                      sources, counts, checksums, statistics, the command
    <dst>/<split>/index.json                 MDS: streaming's merged index over the parts
    <dst>/<split>/part-NNNNN/...             MDS: one streaming dataset per part
    <dst>/<split>/shards.json                tar: shard list with sample counts
    <dst>/<split>/part-NNNNN-MMMMMM.tar[.gz] tar shards
    <dst>/<split>/part-NNNNN.json            per-part completion record
    <dst>/<split>/stats.json                 continuous data: per-feature mean/std of the train split
                                             (images: per-channel over all pixels)
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import queue
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from data_prep.shards import make_sink
from sma.data.streaming_import import import_streaming
from sma.data.samples import Sample, check_sample, pack_windows, tokens_of
from sma.data.storage import filesystem, join
from sma.inputs import InputError

log = logging.getLogger("data_prep")

MANIFEST_VERSION = "sma-shards-v1"
ERRORS_KEPT = 20  # skipped-record messages kept per part in the manifest


class PrepError(RuntimeError):
    """A run that cannot finish: bad input (with file and record) or failed parts."""

    exit_code = 1  # of the ``python -m data_prep.<corpus>`` command


class NoSamplesError(PrepError):
    """A split got no samples from any of its inputs: nothing is indexed, so readers see no finished run."""

    exit_code = 2


@dataclass(frozen=True)
class Part:
    """The samples of one input file for one split. ``rows`` limits a file shared by two splits."""

    index: int
    split: str
    source: str
    rows: tuple[int, int] | None = None  # [start, stop) record numbers, None: all

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"


class Corpus:
    """How to read one corpus. Instances travel to worker processes, so they hold only plain data.

    ``records`` yields ``(location, raw)`` pairs, ``location`` naming the record for error messages
    ("line 12", "record 7"); ``parse`` turns one raw record into an item (None: the record holds none)
    or raises ``ValueError``/``KeyError``/``TypeError``; ``keep`` drops items the corpus does not want
    (counted, described by ``dropped_what``); ``samples`` turns the stream of items into shard samples.
    """

    name = "corpus"
    dropped_what = "items the corpus does not keep"

    def keep(self, item: Any) -> bool:
        return True

    def records(self, part: Part, endpoint_url: str) -> Iterator[tuple[str, Any]]:
        raise NotImplementedError

    def parse(self, raw: Any) -> Any:
        return raw

    def samples(self, items: Iterator[Any]) -> Iterator[Sample]:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Everything that changes the output besides the sources (part of each part's fingerprint)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def split_info(self, split: str) -> dict[str, Any]:
        """What readers should know about a split's samples beyond the generic counts (images: the grid)."""
        return {}


class WindowCorpus(Corpus):
    """A discrete corpus: ``parse`` gives documents (or None for records that hold none), which are cut
    into byte-id windows of ``window`` ids (``sma.data.samples.pack_windows``)."""

    pack = True  # several short documents per window

    def __init__(self, window: int):
        self.window = window

    def samples(self, items: Iterator[str | None]) -> Iterator[Sample]:
        for ids in pack_windows((d for d in items if d), self.window, self.pack):
            yield {"ids": ids}


@dataclass(frozen=True)
class WriteOptions:
    dst: str
    format: str = "mds"
    compression: bool = False
    shard_bytes: int = 64 << 20
    shard_samples: int = 100_000  # tar only; MDS shards are cut by size
    workers: int = 1
    on_error: str = "stop"  # stop | skip
    endpoint_url: str = ""
    staging: str = ""  # local staging folder (default: a temp folder)
    command: list[str] = field(default_factory=list)


@dataclass
class PartResult:
    part: Part
    samples: int = 0
    records: int = 0  # read from the input, including skipped and dropped ones
    skipped: int = 0  # malformed (--on-error skip)
    dropped: int = 0  # well-formed but not kept (Corpus.keep: Pfam's --longer-than)
    longest: int | None = None  # tokens in the longest sample (None: recorded by an older version)
    d_raw: int | None = None  # continuous samples: values per token
    errors: list[str] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)  # name, bytes, sha256
    fingerprint: str = ""
    mds_index: dict[str, Any] | None = None
    stats: dict[str, list] | None = None  # count, sum, sumsq of continuous features (float64)
    reused: bool = False

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("reused")
        d["part"] = asdict(self.part)
        return d


def sha256_of(f) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def fingerprint(corpus: Corpus, part: Part, opts: WriteOptions) -> str:
    settings = {"corpus": corpus.name, "settings": corpus.settings(), "part": asdict(part),
                "format": opts.format, "compression": opts.compression, "shard_bytes": opts.shard_bytes,
                "shard_samples": opts.shard_samples, "on_error": opts.on_error}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class _Stats:
    """Running sums for per-feature standardization (float64 so 11M rows lose nothing), or per-channel
    over all pixels for images (float64 sums of uint8 values stay exact up to ~10^11 pixels)."""

    def __init__(self) -> None:
        self.count, self.sum, self.sumsq = 0, None, None

    def add(self, x: np.ndarray) -> None:
        x = x.astype(np.float64)
        if self.sum is None:
            self.sum, self.sumsq = np.zeros_like(x), np.zeros_like(x)
        self.count += 1
        self.sum += x
        self.sumsq += x * x

    def add_pixels(self, px: np.ndarray) -> None:
        """Per-channel sums over every pixel of an image ``(H*W, C)``: statistics of shape ``(1, C)``."""
        x = px.astype(np.float64)
        if self.sum is None:
            self.sum, self.sumsq = np.zeros((1, x.shape[1])), np.zeros((1, x.shape[1]))
        self.count += x.shape[0]
        self.sum += x.sum(0, keepdims=True)
        self.sumsq += (x * x).sum(0, keepdims=True)

    def as_dict(self) -> dict[str, Any] | None:
        if self.sum is None:
            return None
        return {"count": self.count, "sum": self.sum.tolist(), "sumsq": self.sumsq.tolist()}


_progress_queue: Any = None  # set in worker processes: (samples, bytes) increments for the bar


def _init_worker(q: Any) -> None:
    global _progress_queue
    _progress_queue = q


def write_part(corpus: Corpus, part: Part, opts: WriteOptions, progress: Callable[[int, int], None] | None = None) -> PartResult:
    """Read, convert, stage, checksum and upload one part; its record is written last."""
    report = progress or (lambda n, b: _progress_queue.put((n, b)) if _progress_queue is not None else None)
    result = PartResult(part, fingerprint=fingerprint(corpus, part, opts))
    if opts.staging:
        os.makedirs(opts.staging, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f"{part.name}-", dir=opts.staging or None)
    try:
        sink = make_sink(opts.format, staging, part.name, opts.compression, opts.shard_bytes, opts.shard_samples)
        stats = _Stats()
        pending, pending_bytes = 0, 0

        def items() -> Iterator[Any]:
            for location, raw in corpus.records(part, opts.endpoint_url):
                result.records += 1
                try:
                    item = corpus.parse(raw)
                except (ValueError, KeyError, TypeError, InputError) as e:
                    message = f"{part.source}: {location}: {type(e).__name__}: {e}"
                    if opts.on_error == "stop":
                        raise PrepError(f"{message} (pass --on-error skip to skip and count such records)") from None
                    result.skipped += 1
                    if len(result.errors) < ERRORS_KEPT:
                        result.errors.append(message)
                    log.warning("skipped %s", message)
                    continue
                if item is not None and not corpus.keep(item):
                    result.dropped += 1
                    continue
                yield item

        result.longest = 0

        for sample in corpus.samples(items()):
            try:
                sample = check_sample(sample, f"{part.source} sample {result.samples}")
            except InputError as e:  # a corpus module bug rather than bad input: always stop
                raise PrepError(str(e)) from None
            sink.write(sample)
            tokens = tokens_of(sample)
            result.longest = max(result.longest, len(tokens))
            if "x" in sample:
                stats.add(sample["x"])
            elif "px" in sample:
                stats.add_pixels(sample["px"])
            if tokens.ndim == 2:
                result.d_raw = tokens.shape[1]
            result.samples += 1
            pending += 1
            pending_bytes += sum(np.asarray(v).nbytes for v in sample.values())
            if pending >= 1000:
                report(pending, pending_bytes)
                pending, pending_bytes = 0, 0
        report(pending, pending_bytes)
        names = sink.close()
        result.stats = stats.as_dict()
        _upload(staging, names, part, opts, result)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _upload(staging: str, names: list[tuple[str, int | None]], part: Part, opts: WriteOptions, result: PartResult) -> None:
    fs, root = filesystem(join(opts.dst, part.split), opts.endpoint_url)
    _remove_part(fs, root, part)  # leftovers of an interrupted attempt
    fs.makedirs(root, exist_ok=True)  # the record is written even for an input that gave no samples
    for name, samples in names:
        local = os.path.join(staging, name)
        with open(local, "rb") as f:
            result.files.append({"name": name, "bytes": os.path.getsize(local), "sha256": sha256_of(f),
                                 "samples": samples})
        fs.makedirs(os.path.dirname(join(root, name)), exist_ok=True)
        fs.put_file(local, join(root, name))
    if opts.format == "mds" and names:
        with open(os.path.join(staging, part.name, "index.json")) as f:
            result.mds_index = json.load(f)
    _write_json(fs, join(root, f"{part.name}.json"), result.record())  # the completion record, last


def _remove_part(fs, root: str, part: Part) -> None:
    leftovers = fs.glob(join(root, f"{part.name}-*")) + fs.glob(join(root, part.name))
    leftovers += fs.glob(_temporary(join(root, f"{part.name}.json"), "*"))  # a record whose write was killed
    for path in leftovers:
        fs.rm(path, recursive=True)


def reuse_part(corpus: Corpus, part: Part, opts: WriteOptions) -> PartResult | None:
    """The record of an already complete part, if it matches this run and its files verify."""
    fs, root = filesystem(join(opts.dst, part.split), opts.endpoint_url)
    record_path = join(root, f"{part.name}.json")
    if not fs.exists(record_path):
        return None
    try:
        with fs.open(record_path) as f:
            rec = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        log.warning("%s is unreadable (%s); rewriting %s", record_path, e, part.name)
        return None
    if rec.get("fingerprint") != fingerprint(corpus, part, opts):
        log.info("%s/%s was written with other settings; rewriting it", part.split, part.name)
        return None
    for entry in rec["files"]:
        path = join(root, entry["name"])
        if not fs.exists(path) or fs.size(path) != entry["bytes"]:
            log.warning("%s is missing or has the wrong size; rewriting %s", path, part.name)
            return None
        with fs.open(path, "rb") as f:
            if sha256_of(f) != entry["sha256"]:
                log.warning("%s fails its checksum; rewriting %s", path, part.name)
                return None
    rec["part"] = Part(**{**rec["part"], "rows": tuple(rec["part"]["rows"]) if rec["part"]["rows"] else None})
    return PartResult(**rec, reused=True)


def run(corpus: Corpus, parts: list[Part], opts: WriteOptions, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write every part (reusing verified complete ones), then the split indexes and the manifest."""
    if opts.on_error not in ("stop", "skip"):
        raise ValueError(f"--on-error must be stop or skip, got {opts.on_error!r}")
    if opts.format == "mds":
        import_streaming()  # once here, not in every forked worker
    results: dict[int, PartResult] = {}
    todo = []
    for part in parts:
        done = reuse_part(corpus, part, opts)
        if done is not None:
            results[part.index] = done
        else:
            todo.append(part)
    log.info("%d part(s) to write, %d already complete and verified", len(todo), len(results))
    failures: list[str] = []
    with tqdm(total=None, unit=" samples", desc=f"{corpus.name} -> {opts.format}", dynamic_ncols=True,
              disable=None) as bar:
        written_bytes = [0]

        def progress(n: int, b: int) -> None:
            written_bytes[0] += b
            bar.update(n)
            bar.set_postfix_str(f"{written_bytes[0] / 1e6:.1f} MB", refresh=False)

        if opts.workers <= 1 or len(todo) <= 1:
            for part in todo:
                try:
                    results[part.index] = write_part(corpus, part, opts, progress)
                except PrepError as e:
                    failures.append(str(e))
                    if opts.on_error == "stop":
                        break
        else:
            _run_pool(corpus, todo, opts, progress, results, failures)
    if failures:
        raise PrepError(
            f"{len(failures)} part(s) failed; {len(results)} complete part(s) are kept and a re-run skips "
            "them:\n  " + "\n  ".join(failures)
        )
    return _finalize(corpus, parts, results, opts, extra or {})


def _run_pool(corpus, todo, opts, progress, results, failures) -> None:
    ctx = mp.get_context("fork")  # workers inherit the imported modules: no per-worker start-up cost
    q = ctx.Queue()
    with ProcessPoolExecutor(min(opts.workers, len(todo)), mp_context=ctx, initializer=_init_worker,
                             initargs=(q,)) as pool:
        futures: dict[Future, Part] = {pool.submit(write_part, corpus, p, opts): p for p in todo}
        pending = set(futures)
        while pending:
            try:
                progress(*q.get(timeout=0.2))
            except queue.Empty:
                pass
            for fut in [f for f in pending if f.done()]:
                pending.discard(fut)
                try:
                    results[futures[fut].index] = fut.result()
                except PrepError as e:
                    failures.append(str(e))
        while not q.empty():
            progress(*q.get())


def _finalize(corpus, parts, results, opts, extra) -> dict[str, Any]:
    splits: dict[str, list[PartResult]] = {}
    for part in parts:
        splits.setdefault(part.split, []).append(results[part.index])
    warnings = {s: [f"{r.part.source}: no samples {_counts(corpus, r)}" for r in res if not r.samples]
                for s, res in splits.items()}
    for message in (m for ms in warnings.values() for m in ms):
        log.warning("%s", message)
    empty = [s for s, res in splits.items() if not any(r.samples for r in res)]
    if empty:  # before anything is indexed: readers must not accept a split without samples
        inputs = {s: ", ".join(f"{r.part.source} {_counts(corpus, r)}" for r in splits[s]) for s in empty}
        raise NoSamplesError("no samples: " + "; ".join(f"split {s} got none from its input(s) {inputs[s]}" for s in empty)
                             + ". Nothing was indexed and no manifest was written: check --src (and the options "
                             "that drop or skip records)")
    stats = _feature_stats(splits.get("train", []))
    for split, res in splits.items():
        fs, root = filesystem(join(opts.dst, split), opts.endpoint_url)
        if opts.format == "mds":
            _write_json(fs, join(root, "index.json"), _merged_mds_index(res))
        else:
            shards = [{"url": f["name"], "samples": f["samples"], "bytes": f["bytes"], "sha256": f["sha256"]}
                      for r in res for f in r.files]
            _write_json(fs, join(root, "shards.json"), {"format": "sma-wds-v1", "shards": shards})
        if stats is not None:
            _write_json(fs, join(root, "stats.json"), stats)
    manifest = {
        "version": MANIFEST_VERSION,
        "corpus": corpus.name,
        "settings": corpus.settings(),
        "format": opts.format,
        "compression": opts.compression,
        "command": opts.command,
        "splits": {s: _split_info(corpus, opts, res, warnings[s]) for s, res in splits.items()},
        "stats": stats,
        **extra,
    }
    fs, root = filesystem(opts.dst, opts.endpoint_url)
    _keep_other_splits(fs, join(root, "manifest.json"), manifest)
    _write_json(fs, join(root, "manifest.json"), manifest)
    for s in splits:
        info = manifest["splits"][s]
        log.info("%s: %d samples in %d part(s), %d bad record(s) skipped, %d dropped (%s)", s, info["samples"],
                 len(info["parts"]), info["skipped_records"], info["dropped"], info["dropped_what"])
    return manifest


def _counts(corpus: Corpus, r: PartResult) -> str:
    counts = [f"{r.records} record(s) read"]
    if r.skipped:
        counts.append(f"{r.skipped} malformed skipped")
    if r.dropped:
        counts.append(f"{r.dropped} dropped: {corpus.dropped_what}")
    return f"({', '.join(counts)})"


def _split_info(corpus: Corpus, opts: WriteOptions, res: list[PartResult], warnings: list[str]) -> dict[str, Any]:
    """A split's manifest entry. The settings readers depend on (the window, the longest sample, d_raw)
    are recorded per split: a later run into the same destination (``--split eval`` with another
    --window) rewrites only its own splits' entries."""
    longest = [r.longest for r in res if r.samples]
    d_raw = {r.d_raw for r in res if r.samples and r.d_raw is not None}
    return {"samples": sum(r.samples for r in res), "skipped_records": sum(r.skipped for r in res),
            "dropped": sum(r.dropped for r in res), "dropped_what": corpus.dropped_what,
            "settings": corpus.settings(), "compression": opts.compression,
            "longest": None if None in longest else max(longest), "d_raw": min(d_raw) if len(d_raw) == 1 else None,
            "warnings": warnings, "parts": [r.record() for r in res], **corpus.split_info(res[0].part.split)}


def _keep_other_splits(fs, path: str, manifest: dict[str, Any]) -> None:
    """Splits written by earlier runs into the same destination (``--split eval``) stay listed."""
    if not fs.exists(path):
        return
    with fs.open(path) as f:
        old = json.load(f)
    if (old.get("corpus"), old.get("format")) != (manifest["corpus"], manifest["format"]):
        raise PrepError(f"{path} describes {old.get('corpus')}/{old.get('format')} shards; write "
                        f"{manifest['corpus']}/{manifest['format']} shards to another destination")
    for split, info in old.get("splits", {}).items():
        manifest["splits"].setdefault(split, info)


def _merged_mds_index(results: list[PartResult]) -> dict[str, Any]:
    # streaming.base.util.merge_index does the same but re-downloads every part index through
    # streaming's own storage backends (S3/GCS/...), not arbitrary fsspec URLs; the part records
    # already hold each index, so the merge is a prefix on each shard's file names.
    shards = []
    for r in results:
        for shard in (r.mds_index or {}).get("shards", []):
            shard = json.loads(json.dumps(shard))
            for key in ("raw_data", "zip_data"):
                if shard.get(key):
                    shard[key]["basename"] = f"{r.part.name}/{shard[key]['basename']}"
            shards.append(shard)
    return {"version": 2, "shards": shards}


def _feature_stats(train: list[PartResult]) -> dict[str, Any] | None:
    parts = [r.stats for r in train if r.stats]
    if not parts:
        return None
    count = sum(p["count"] for p in parts)
    total = sum(np.asarray(p["sum"]) for p in parts)
    sumsq = sum(np.asarray(p["sumsq"]) for p in parts)
    mean = total / count
    std = np.sqrt(np.maximum(sumsq / count - mean * mean, 0.0))
    return {"count": count, "mean": mean.tolist(), "std": np.maximum(std, 1e-6).tolist(),
            "computed_on": "train"}


def _write_json(fs, path: str, obj: Any) -> None:
    """Write ``obj`` so that ``path`` is either absent or complete, never half written.

    A local ``open(path, "w")`` creates the file before its content is written, so a process killed
    in between leaves an empty record that a later run would read. The content goes to a hidden
    temporary name first and is renamed into place (atomic locally; an object store's PUT of the
    final name is atomic already).
    """
    tmp = _temporary(path, str(os.getpid()))
    fs.pipe_file(tmp, json.dumps(obj, indent=1, sort_keys=True).encode())
    fs.mv(tmp, path)


def _temporary(path: str, tag: str) -> str:
    """The hidden name ``path`` is written under before it is renamed into place (``tag="*"``: a glob)."""
    folder, name = path.rsplit("/", 1)
    return f"{folder}/.{name}.{tag}.tmp"
