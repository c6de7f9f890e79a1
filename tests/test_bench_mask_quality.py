"""bench/mask_quality.py --quick: real pretraining and fine-tuning runs end to end, one table out."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("streaming_shm_cleanup")]


def test_quick_mask_quality_prints_one_row_per_masking_with_alignments_in_unit_interval(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "bench" / "mask_quality.py"), "--quick", "--out",
                          str(tmp_path / "runs"), "--json", str(tmp_path / "raw.json")],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("|")]
    header, body = rows[0], rows[2:]
    assert len(header) == 8 and all(len(r) == 8 for r in body)
    assert [(r[0].strip(), r[1].strip()) for r in body] == [
        ("tables", "guided"), ("tables", "random"), ("tables", "guided, selection_keys=position"),
        ("tables", "scratch")]
    raw = json.loads((tmp_path / "raw.json").read_text())["tables"]
    for name in ("guided", "random", "guided, selection_keys=position"):
        assert 0.0 <= raw[name]["alignment"] <= 1.0 and 0.0 <= raw[name]["alignment_random"] <= 1.0
    assert 0.0 <= raw["guided"]["finetune@100"] <= 1.0  # the one fine-tune of the smoke run
    assert raw["random"]["alignment"] == raw["random"]["alignment_random"]  # random masks are random masks
