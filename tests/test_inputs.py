"""Byte codec and continuous inputs (the SMA paper) with clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sma.cli import PAPER_SIZES, params_main
from sma.inputs import (PAD, SEP, VOCAB_SIZE, Batch, InputError, check_batch, decode, encode, encode_batch,
                        pad_continuous, pad_ids)


def test_single_sequence_is_bytes_then_sep():
    ids = encode("Añb")
    raw = "Añb".encode()
    assert ids.tolist() == [b + 6 for b in raw] + [SEP]
    assert decode(ids) == "Añb"
    assert VOCAB_SIZE == 262


def test_pair_is_a_sep_b_sep_and_decodes_back():
    ids = encode("MKV", "GLU")
    assert ids.tolist() == [ord(c) + 6 for c in "MKV"] + [SEP] + [ord(c) + 6 for c in "GLU"] + [SEP]
    assert decode(ids) == "MKV\tGLU"


def test_batch_is_right_padded_with_a_validity_mask():
    batch = encode_batch(["abc", ("de", "f")], max_len=8)
    assert batch.inputs.shape == (2, 8) and batch.inputs.dtype == torch.int64
    assert batch.valid.sum(1).tolist() == [4, 5]
    assert (batch.inputs[~batch.valid] == PAD).all()
    assert decode(batch.inputs[1][batch.valid[1]]) == "de\tf"


def test_truncation_cuts_the_longer_pair_member_first():
    ids = encode("a" * 10, "b" * 3, max_len=10, truncate=True)
    assert len(ids) == 10
    assert decode(ids) == "a" * 5 + "\t" + "bbb"


@pytest.mark.parametrize("call,match", [
    (lambda: encode(""), "empty"),
    (lambda: encode("abcdef", max_len=4), "exceeds max_len=4; pass truncate=True"),
    (lambda: encode(123), "expected str or bytes"),
    (lambda: pad_ids([np.array([7, 8]), np.array([], dtype=np.int64)]), "sample 1: empty"),
    (lambda: pad_ids([np.array([7, 999])]), "ids must lie"),
    (lambda: pad_ids([np.array([7, 8, 9])], length=2), "does not fit"),
    (lambda: pad_continuous([np.ones((3, 2)), np.array([[1.0, np.nan]])]), "sample 1: non-finite"),
    (lambda: pad_continuous([np.ones((3, 2)), np.ones((3, 3))]), "d_raw=3 differs"),
    (lambda: pad_continuous([np.ones((3, 2, 1))]), r"shape \(n, d_raw\)"),
    (lambda: pad_continuous([np.array([np.inf, 1.0])]), "non-finite"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(InputError, match=match):
        call()


def test_continuous_samples_pad_to_b_n_draw():
    batch = pad_continuous([np.arange(4.0), np.arange(2.0)], length=5)
    assert batch.inputs.shape == (2, 5, 1) and batch.inputs.dtype == torch.float32
    assert batch.valid.sum(1).tolist() == [4, 2]
    assert not batch.is_discrete


def test_check_batch_rejects_wrong_rank_range_and_empty_rows():
    ok = encode_batch(["hi"], max_len=4)
    check_batch(ok)
    with pytest.raises(InputError, match="ids must lie"):
        check_batch(Batch(ok.inputs + 300, ok.valid))
    with pytest.raises(InputError, match="at least one valid token"):
        check_batch(Batch(ok.inputs, torch.zeros_like(ok.valid)))
    with pytest.raises(InputError, match=r"\(B, n, d_raw\)"):
        check_batch(Batch(torch.zeros(1, 4), ok.valid))
    with pytest.raises(InputError, match="d_raw=2"):
        check_batch(Batch(torch.zeros(1, 4, 2), ok.valid), d_raw=1)


def test_parameter_count_command_prints_the_paper_sizes(capsys):
    params_main([])
    out = capsys.readouterr().out
    for name in PAPER_SIZES:
        assert name.split(" (")[0] in out
    # HIGGS 4 x 128 is about a million parameters; the 16-layer Perceiver about two hundred million.
    assert "1.00 M" in out and "217.17 M" in out
