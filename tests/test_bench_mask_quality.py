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


@pytest.mark.parametrize("kind", ["tables", "words"])
def test_held_out_inputs_for_visualize_name_the_hidden_groups(tmp_path, kind):
    sys.path.insert(0, str(REPO))
    import numpy as np

    from bench.hidden_structure import Tables, Words, write_inputs
    from sma.visualize import read_byte_inputs, read_continuous_inputs

    gen = Tables() if kind == "tables" else Words()
    path = tmp_path / ("rows.csv" if kind == "tables" else "rows.txt")
    write_inputs(gen, path, 20, seed=7)
    draw = gen.draw(20, np.random.default_rng(7))
    if kind == "tables":
        inputs = read_continuous_inputs(path, gen.n, 1)
        assert inputs.columns == [f"{j}:g{g}" for j, g in enumerate(draw.groups[0])]
        assert sorted(c.split(":g")[1] for c in inputs.columns) == sorted(str(t // 8) for t in range(32))
        np.testing.assert_allclose(inputs.batch.inputs[..., 0].numpy(), draw.tokens, rtol=1e-5)
    else:
        inputs = read_byte_inputs(path, gen.n + 1)
        assert len(inputs.labels) == 20
        assert path.read_text().splitlines() == [t.decode("ascii") for t in draw.tokens]
