"""``python -m sma.visualize`` on tiny exported models made here: each mode writes its pictures, the HTML
holds the inputs' text (escaped) with exactly the masked bytes highlighted, the co-masking matrix is
symmetric with each token's mask frequency on its diagonal, and bad inputs are named by their line."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers_model import TEXT_MASKING, tiny_perceiver, tiny_transformer
from sma.checkpoint import FORMAT
from sma.config import MaskingConfig, TrainConfig, to_dict
from sma.masking import num_to_mask
from sma.model import build_pretrain_model
from sma.train.checkpointing import atomic_torch_save
from sma.inputs import NUM_SPECIAL, SEP
from sma.visualize import main, render_bytes

TABLE_MASKING = MaskingConfig(ratio=0.25, num_per_query=2.0, head_aggregation="random_mix", mask_self=True)


def _export(path: Path, model_cfg, masking) -> Path:
    torch.manual_seed(0)
    cfg = TrainConfig(model=model_cfg, masking=masking)
    model = build_pretrain_model(cfg.model, cfg.masking)
    atomic_torch_save({"format": FORMAT, "config": to_dict(cfg), "model": model.state_dict(), "step": 0}, path)
    return path


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("text") / "model.pt", tiny_perceiver(max_len=48), TEXT_MASKING)


@pytest.fixture(scope="module")
def table_model(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("table") / "model.pt", tiny_transformer(max_len=28), TABLE_MASKING)


def _rows(page: str) -> list[tuple[str, int, str]]:
    """(what, data-masked, cell HTML) of every mask row of the page."""
    return re.findall(r'<td class="what">([^<]*)</td><td class="seq" data-masked="(\d+)">(.*?)</td>', page)


def test_text_page_shows_each_input_escaped_with_its_masked_bytes_highlighted(text_model, tmp_path, capsys):
    lines = ['<b>Tom & "Jerry"</b> chase', "plain words, tab\tand 'quotes'", "", "x" * 80]
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join(lines) + "\n")
    assert main([str(text_model), str(inputs), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "masks.html").read_text()
    assert (tmp_path / "out" / "masks.png").stat().st_size > 0
    assert "<b>" not in page
    rows = _rows(page)
    assert len(rows) == 3 * 3  # three inputs (the blank line skipped), two learned draws and a random mask
    expected_text = [lines[0], lines[1], "x" * 47]  # cut to max_len 48 with [SEP]
    for k, (what, masked, cell) in enumerate(rows):
        text = html.unescape(re.sub(r"<[^>]+>", "", cell)).replace("\u21e5", "\t")
        assert text == expected_text[k // 3] + "\u00b7", what
        highlighted = sum(int(b) for b in re.findall(r'<mark data-bytes="(\d+)"', cell))
        n_tokens = len(expected_text[k // 3].encode()) + 1
        assert highlighted == int(masked) == int(num_to_mask(torch.tensor([n_tokens]), TEXT_MASKING.ratio))
    assert "&lt;b&gt;Tom &amp; &quot;Jerry&quot;&lt;/b&gt;" in re.sub(r"</?mark[^>]*>", "", page)
    assert "line 3: blank, skipped" in page and "line 4: 80 bytes, cut to the model&#x27;s 47" in page
    assert [w for w, _, _ in rows[:3]] == ["learned, seed 0", "learned, seed 1", "random, same size"]


def test_a_character_is_one_mark_when_all_its_bytes_are_masked_else_shown_byte_by_byte():
    ids = [b + NUM_SPECIAL for b in "a\u00e9".encode()] + [SEP]  # a, 0xc3 0xa9, [SEP]
    assert render_bytes(ids, [False, True, True, True]) == (
        'a<mark data-bytes="2">\u00e9</mark><mark data-bytes="1" class="special">\u00b7</mark>')
    assert render_bytes(ids, [True, True, False, False]) == (
        '<mark data-bytes="1">a</mark><mark data-bytes="1" class="byte">\\xc3</mark><span class="byte">\\xa9</span>'
        '<span class="special">\u00b7</span>')


def test_two_learned_draws_come_from_the_seeds_and_repeat(text_model, tmp_path):
    inputs = tmp_path / "in.fasta"
    inputs.write_text(">first protein\nMKVLLAAGIV\nLLAST\n>second\nMSTNPKPQRK*\n")
    for out in ("a", "b"):
        assert main([str(text_model), str(inputs), "--out", str(tmp_path / out), "--seed", "3"]) == 0
    page = (tmp_path / "a" / "masks.html").read_text()
    assert page == (tmp_path / "b" / "masks.html").read_text()
    assert "line 2 (&gt;first protein)" in page and "line 5 (&gt;second)" in page
    texts = [html.unescape(re.sub(r"<[^>]+>", "", cell)) for _, _, cell in _rows(page)]
    assert texts[0] == "MKVLLAAGIVLLAST\u00b7" and texts[3] == "MSTNPKPQRK\u00b7"


def test_comasking_matrix_is_symmetric_with_mask_frequencies_on_its_diagonal(table_model, tmp_path):
    rng = np.random.default_rng(0)
    inputs = tmp_path / "rows.csv"
    names = [f"f{i}" for i in range(28)]
    inputs.write_text(",".join(names) + "\n" + "\n".join(",".join(f"{v:.4f}" for v in row)
                                                         for row in rng.normal(size=(12, 28))) + "\n")
    assert main([str(table_model), str(inputs), "--out", str(tmp_path / "out"), "--draws", "4"]) == 0
    m = np.load(tmp_path / "out" / "comask.npy")
    rand = np.load(tmp_path / "out" / "comask_random.npy")
    order = np.load(tmp_path / "out" / "comask_order.npy")
    assert m.shape == (28, 28) and np.allclose(m, m.T) and np.allclose(rand, rand.T)
    k = int(num_to_mask(torch.tensor([28]), TABLE_MASKING.ratio))
    # every mask holds k tokens: the mask frequencies on the diagonal sum to k; a row sums to k x its frequency
    assert np.diag(m).sum() == pytest.approx(k) and np.diag(rand).sum() == pytest.approx(k)
    assert m.sum(1) == pytest.approx(k * np.diag(m))
    assert sorted(order.tolist()) == list(range(28))
    assert (tmp_path / "out" / "comask.png").stat().st_size > 0


def test_npy_inputs_and_image_grid(tmp_path):
    model = _export(tmp_path / "img.pt", tiny_transformer(max_len=16, d_raw=3), TABLE_MASKING)
    x = np.random.default_rng(0).random((3, 4, 4, 3)).astype(np.float32)
    np.save(tmp_path / "img.npy", x)
    assert main([str(model), str(tmp_path / "img.npy"), "--out", str(tmp_path / "out"), "--image-shape", "4,4,3"]) == 0
    assert (tmp_path / "out" / "images.png").stat().st_size > 0
    assert main([str(model), str(tmp_path / "img.npy"), "--out", str(tmp_path / "co")]) == 0
    assert np.load(tmp_path / "co" / "comask.npy").shape == (16, 16)
    assert main([str(model), str(tmp_path / "img.npy"), "--out", str(tmp_path / "x"), "--image-shape", "2,8,1"]) == 2


@pytest.mark.parametrize("content,message", [
    ("", "empty file"),
    ("1,2,3\n4,5,6\n7,8\n", "line 3: 2 columns, expected 3"),
    ("1,2,3\n\n4,x,6\n", "line 3: 'x' is not a finite number"),
])
def test_bad_table_inputs_are_named_by_their_line(table_model, tmp_path, capsys, content, message):
    inputs = tmp_path / "bad.csv"
    inputs.write_text(content)
    assert main([str(table_model), str(inputs), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_empty_text_file_is_refused(text_model, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n\n")
    assert main([str(text_model), str(tmp_path / "empty.txt"), "--out", str(tmp_path / "out")]) == 2
    assert "empty file" in capsys.readouterr().err
