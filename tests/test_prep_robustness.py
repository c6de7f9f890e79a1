"""data_prep guarantees: deterministic output, resumable after an interrupted run, bad records reported
with file and line, damaged shards named by the readers."""

from __future__ import annotations

import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from data_prep import text
from sma.inputs import InputError
from test_prep_formats import FORMATS, read_back, write_books, write_jsonl, write_smiles

pytestmark = pytest.mark.usefixtures("streaming_shm_cleanup")


def docs(seed: int, n: int = 40) -> list[str]:
    return [f"file {seed} doc {i}: " + "lorem ipsum " * (i % 7) for i in range(n)]


def make_sources(folder: Path, bad_line_in: int | None = None) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_jsonl(folder / f"{c}.jsonl", docs(i)) for i, c in enumerate("abc")]
    if bad_line_in is not None:
        lines = paths[bad_line_in].read_text().splitlines()
        lines[2] = '{"text": "unterminated'
        paths[bad_line_in].write_text("\n".join(lines) + "\n")
    return [str(p) for p in paths]


def prep(srcs: list[str], dst: Path, fmt: str, *extra: str) -> dict:
    return text.main(["--src", *srcs, "--dst", str(dst), "--format", fmt, "--window", "64", "--shard-samples",
                      "16", "--quiet", *extra])


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_input_gives_byte_identical_shards(tmp_path, fmt):
    srcs = make_sources(tmp_path / "src")
    a = prep(srcs, tmp_path / "a", fmt, "--compression", "--workers", "2")
    b = prep(srcs, tmp_path / "b", fmt, "--compression")
    fa, fb = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    assert fa.keys() == fb.keys() and len(fa) > 5
    assert {k: v for k, v in fa.items() if k != "manifest.json"} == {k: v for k, v in fb.items() if k != "manifest.json"}
    a.pop("command"), b.pop("command")  # the destination differs, nothing else may
    assert a == b


@pytest.mark.parametrize("fmt", FORMATS)
def test_interrupted_run_resumes_and_keeps_verified_parts(tmp_path, fmt, caplog):
    srcs = make_sources(tmp_path / "src", bad_line_in=1)
    dst = tmp_path / "out"
    with pytest.raises(SystemExit):
        prep(srcs, dst, fmt)
    assert "b.jsonl: line 3: JSONDecodeError" in caplog.text  # file and line of the bad record
    assert (dst / "train" / "part-00000.json").exists()  # the part before the bad one is complete
    assert not (dst / "manifest.json").exists()
    with pytest.raises(InputError, match="not found"):  # readers refuse the unfinished destination
        read_back(f"{dst}/train", fmt, 64)
    # a half-written shard of a later part, as a killed run leaves it
    half = dst / "train" / ("part-00002-000000.tar" if fmt == "wds" else "part-00002/shard.00000.mds")
    half.parent.mkdir(parents=True, exist_ok=True)
    half.write_bytes(b"half a shard")
    done = {p: p.stat().st_mtime_ns for p in (dst / "train").glob("part-00000*") if p.is_file()}

    srcs = make_sources(tmp_path / "src")  # the bad record fixed
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="data_prep"):
        prep(srcs, dst, fmt)
    assert "2 part(s) to write, 1 already complete and verified" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in done} == done  # not rewritten
    prep(srcs, tmp_path / "clean", fmt)
    clean = files_of(tmp_path / "clean")
    resumed = files_of(dst)
    assert {k: v for k, v in resumed.items() if k != "manifest.json"} == {
        k: v for k, v in clean.items() if k != "manifest.json"}


def test_skip_mode_counts_bad_records_and_keeps_the_rest(tmp_path):
    srcs = make_sources(tmp_path / "src", bad_line_in=2)
    manifest = prep(srcs, tmp_path / "out", "wds", "--on-error", "skip")
    info = manifest["splits"]["train"]
    assert info["skipped_records"] == 1
    assert info["parts"][2]["errors"][0].endswith("c.jsonl: line 3: JSONDecodeError: Unterminated string "
                                                  "starting at: line 1 column 10 (char 9)")
    texts = "\t".join(read_back(str(tmp_path / "out" / "train"), "wds", 64))
    assert "file 2 doc 1:" in texts and "file 2 doc 2:" not in texts and "file 2 doc 3:" in texts


def test_a_src_pattern_matching_nothing_stops_the_command_naming_it(tmp_path):
    srcs = make_sources(tmp_path / "src")
    with pytest.raises(SystemExit, match=r"--src '.*/nothing-\*.jsonl' matches no file"):
        prep([*srcs, str(tmp_path / "nothing-*.jsonl")], tmp_path / "out", "wds")
    assert not (tmp_path / "out").exists()


def test_rerun_rewrites_a_part_whose_shard_fails_its_checksum(tmp_path, caplog):
    srcs = make_sources(tmp_path / "src")
    dst = tmp_path / "out"
    prep(srcs, dst, "wds")
    shard = dst / "train" / "part-00001-000000.tar"
    good = shard.read_bytes()
    shard.write_bytes(good[:1000] + bytes(b ^ 0xFF for b in good[1000:1008]) + good[1008:])  # same size
    with caplog.at_level(logging.INFO, logger="data_prep"):
        prep(srcs, dst, "wds")
    assert "fails its checksum; rewriting part-00001" in caplog.text
    assert shard.read_bytes() == good


def test_rerun_rewrites_a_part_whose_record_was_left_half_written(tmp_path, caplog):
    srcs = make_sources(tmp_path / "src")
    dst = tmp_path / "out"
    prep(srcs, dst, "wds")
    record = dst / "train" / "part-00002.json"
    good = json.loads(record.read_text())
    record.write_text(record.read_text()[:40])  # what a crash mid-write of a non-atomic writer leaves
    leftover = dst / "train" / ".part-00002.json.999.tmp"  # a temporary record of a killed run
    leftover.write_text("{")
    with caplog.at_level(logging.INFO, logger="data_prep"):
        prep(srcs, dst, "wds")
    assert "part-00002.json is unreadable" in caplog.text
    assert "1 part(s) to write, 2 already complete and verified" in caplog.text
    assert json.loads(record.read_text()) == good and not leftover.exists()


@pytest.mark.parametrize("compression", [False, True])
def test_truncated_tar_shard_error_names_the_shard(tmp_path, compression):
    srcs = make_sources(tmp_path / "src")
    dst = tmp_path / "out"
    prep(srcs, dst, "wds", *(["--compression"] if compression else []))
    shard = next((dst / "train").glob("part-00001-000001.tar*"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(InputError, match=f"damaged tar shard .*{shard.name}"):
        read_back(str(dst / "train"), "wds", 64)


def test_truncated_mds_shard_error_names_the_shard(tmp_path):
    srcs = make_sources(tmp_path / "src")
    dst = tmp_path / "out"
    prep(srcs, dst, "mds")
    shard = dst / "train" / "part-00001" / "shard.00000.mds"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(InputError, match="damaged shard.*part-00001/shard.00000.mds"):
        read_back(str(dst / "train"), "mds", 64)


def test_manifest_records_sources_counts_checksums_and_command(tmp_path):
    srcs = make_sources(tmp_path / "src")
    manifest = prep(srcs, tmp_path / "out", "mds")
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk == manifest
    parts = manifest["splits"]["train"]["parts"]
    assert [p["part"]["source"] for p in parts] == srcs
    assert sum(p["samples"] for p in parts) == manifest["splits"]["train"]["samples"] > 0
    for p in parts:
        for f in p["files"]:
            assert len(f["sha256"]) == 64 and (tmp_path / "out" / "train" / f["name"]).stat().st_size == f["bytes"]
    assert manifest["command"][:3] == ["python", "-m", "data_prep.text"] and "--dst" in manifest["command"]


def test_killed_run_leaves_nothing_readers_accept_and_a_rerun_completes_it(tmp_path, caplog):
    # The second input is a named pipe: the run completes part 0, then blocks opening part 1 until we
    # SIGKILL it there. Nothing is timed: the kill happens at a known point of the run.
    srcs = make_sources(tmp_path / "src")
    fifo = Path(srcs[1])
    content = fifo.read_bytes()
    fifo.unlink()
    os.mkfifo(fifo)
    dst = tmp_path / "out"
    cmd = [sys.executable, "-m", "data_prep.text", "--src", *srcs, "--dst", str(dst), "--format", "wds",
           "--window", "64", "--shard-samples", "16", "--staging", str(tmp_path / "staging"), "--quiet"]
    proc = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + 120
        while not (dst / "train" / "part-00000.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not (dst / "manifest.json").exists() and not (dst / "train" / "shards.json").exists()
    with pytest.raises(InputError, match="has not finished"):
        read_back(str(dst / "train"), "wds", 64)
    fifo.unlink()
    fifo.write_bytes(content)
    with caplog.at_level(logging.INFO, logger="data_prep"):
        prep(srcs, dst, "wds")
    assert "2 part(s) to write, 1 already complete and verified" in caplog.text
    prep(srcs, tmp_path / "clean", "wds")
    assert read_back(str(dst / "train"), "wds", 64) == read_back(str(tmp_path / "clean" / "train"), "wds", 64)


# ---- inputs that give no samples -------------------------------------------------------------------

def write_fasta(path: Path, entries: list[tuple[str, str]], width: int = 60) -> Path:
    """FASTA as UniProt / genome annotation write it: ``>header`` then the sequence wrapped at ``width``;
    gzipped when the name ends in ``.gz``."""
    lines = []
    for header, seq in entries:
        lines.append(f">{header}")
        lines += [seq[i : i + width] for i in range(0, len(seq), width)]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


def empty_input(kind: str, folder: Path) -> tuple[Any, Path]:
    """``(command module, an input of that kind that yields no sample)``."""
    from data_prep import pfam, smiles

    if kind == "plain":  # blank lines only
        return text, write_books(folder / "book.txt", ["", "  ", ""])
    if kind == "jsonl":
        return text, write_jsonl(folder / "wiki.jsonl", [])
    if kind == "smiles":
        return smiles, write_smiles(folder / "guacamol_v1_train.smiles", [])  # one blank line
    return pfam, write_fasta(folder / "short.fasta", [(f"sp|P{i:05d}|S{i}_HUMAN", "MKV" * (i + 1)) for i in range(5)])


@pytest.mark.parametrize("kind", ["plain", "jsonl", "smiles", "fasta-too-short"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_run_whose_inputs_give_no_samples_is_a_clear_error_with_exit_code_2(tmp_path, kind, fmt, caplog):
    module, src = empty_input(kind, tmp_path)
    dst = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--src", str(src), "--dst", str(dst), "--format", fmt, "--quiet"])
    assert exit_info.value.code == 2
    records = {"plain": 0, "jsonl": 0, "smiles": 1, "fasta-too-short": 5}[kind]  # blank lines: no paragraph
    counts = f"{records} record(s) read" + (", 5 dropped: sequences of 50 residues or fewer (--longer-than)"
                                           if kind == "fasta-too-short" else "")
    assert f"no samples: split train got none from its input(s) {src} ({counts}). Nothing was indexed" in caplog.text
    assert not (dst / "manifest.json").exists() and not list(dst.rglob("index.json")) and not list(dst.rglob("shards.json"))
    with pytest.raises(InputError, match="not found"):
        read_back(str(dst / "train"), fmt, 64)


def test_an_input_without_samples_next_to_others_is_a_warning_recorded_in_the_manifest(tmp_path, caplog):
    good = write_jsonl(tmp_path / "a.jsonl", docs(0))
    empty = write_jsonl(tmp_path / "b.jsonl", [])
    manifest = prep([str(empty), str(good)], tmp_path / "out", "mds")  # the empty input is part 0: a new folder
    info = manifest["splits"]["train"]
    assert info["warnings"] == [f"{empty}: no samples (0 record(s) read)"]
    assert [p["samples"] > 0 for p in info["parts"]] == [False, True]
    assert f"{empty}: no samples (0 record(s) read)" in caplog.text
    assert "\t".join(read_back(str(tmp_path / "out" / "train"), "mds", 64)).count("file 0 doc") == 40


def test_the_command_exits_with_status_2_when_no_input_gives_samples(tmp_path):
    src = write_jsonl(tmp_path / "empty.jsonl", [])
    proc = subprocess.run([sys.executable, "-m", "data_prep.text", "--src", str(src), "--dst", str(tmp_path / "out"),
                           "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"no samples: split train got none from its input(s) {src} (0 record(s) read)" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- FASTA as annotation pipelines write it --------------------------------------------------------

LONG = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYPDLDAKGRERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWUAVGYLSPESLEAAGIAEGKTPSEEV"


@pytest.mark.parametrize("name", ["proteins.fasta", "proteins.fa.gz"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_fasta_stop_codons_are_stripped_iupac_codes_kept_and_short_sequences_counted(tmp_path, name, fmt, caplog):
    from data_prep import pfam

    seqs = {"stop": LONG[:90] + "*", "iupac": LONG[:40] + "XBZJUO" + LONG[40:80].lower(), "short": "MKV*",
            "plain": LONG[100:190]}
    src = write_fasta(tmp_path / name, [(f"tr|A0A{i}|{k}_ORYSJ {k} OS=Oryza sativa OX=39947", s)
                                        for i, (k, s) in enumerate(seqs.items())])
    with caplog.at_level(logging.INFO, logger="data_prep"):
        manifest = pfam.main(["--src", str(src), "--dst", str(tmp_path / "out"), "--format", fmt, "--window", "128"])
    got = read_back(str(tmp_path / "out" / "train"), fmt, 128)
    assert got == [LONG[:90], (LONG[:40] + "XBZJUO" + LONG[40:80]).upper(), LONG[100:190]]
    info = manifest["splits"]["train"]
    assert (info["samples"], info["dropped"], info["parts"][0]["dropped"], info["parts"][0]["records"]) == (3, 1, 1, 4)
    assert "train: 3 samples in 1 part(s), 0 bad record(s) skipped, 1 dropped (sequences of 50 residues or fewer" \
        in caplog.text


@pytest.mark.parametrize("name", ["proteins.fasta", "proteins.fasta.gz"])
def test_a_character_that_is_no_residue_is_reported_by_line_position_and_value(tmp_path, name, caplog):
    from data_prep import pfam

    bad = LONG[:70] + "#" + LONG[70:150]  # residue 71: the 11th character of the sequence's 2nd line
    internal_stop = LONG[:30] + "*" + LONG[30:80] + "*"
    src = write_fasta(tmp_path / name, [("sp|P1|OK_HUMAN", LONG[:80]), ("sp|P2|BAD_HUMAN", bad),
                                        ("sp|P3|STOP_HUMAN", internal_stop)])
    # lines: 1 >P1, 2-3 P1, 4 >P2, 5-7 P2 (the '#' on 6), 8 >P3, 9-10 P3
    with pytest.raises(SystemExit) as exit_info:
        pfam.main(["--src", str(src), "--dst", str(tmp_path / "out"), "--quiet"])
    assert exit_info.value.code == 1
    assert (f"{src}: line 6: ResidueError: residue 71 is '#', not an amino-acid letter (A-Z, IUPAC codes included; "
            "a final '*' is stripped)") in caplog.text
    assert LONG[:40] not in caplog.text  # no dump of the residues
    caplog.clear()
    manifest = pfam.main(["--src", str(src), "--dst", str(tmp_path / "out"), "--quiet", "--on-error", "skip"])
    errors = manifest["splits"]["train"]["parts"][0]["errors"]
    assert [e.split(": ResidueError: ")[0] for e in errors] == [f"{src}: line 6", f"{src}: line 9"]
    assert "residue 31 is '*'" in errors[1]
    assert read_back(str(tmp_path / "out" / "train"), "mds", 128) == [LONG[:80]]
