"""The builtin corpora behind ``data.format: builtin`` (no download, used by the demo/tiny configs)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from sma.config import load_config
from sma.data import build_loader
from sma.data.builtin import builtin_split
from sma.inputs import check_batch, decode

HIGGS = ["data.builtin=higgs", "model.modality=continuous", "model.max_len=28", "model.encoder=transformer",
         "model.d_embed=128"]


def cfg_for(*overrides: str):
    return load_config(None, list(overrides))


@pytest.mark.parametrize("name,overrides", [
    ("text", ["model.max_len=256"]), ("smiles", ["model.max_len=256"]), ("protein", ["model.max_len=256"]),
    ("higgs", HIGGS[1:]),
])
def test_builtin_batches_are_padded_and_valid(name, overrides):
    cfg = cfg_for(f"data.builtin={name}", "data.micro_batch_size=4", *overrides)
    batch = next(iter(build_loader(cfg, "train", 0, 1)))
    check_batch(batch, d_raw=cfg.model.d_raw)
    assert batch.inputs.shape[:2] == (4, cfg.model.max_len)
    # validity is a prefix: padding only on the right
    assert torch.equal(batch.valid, batch.valid.cumprod(dim=1).bool())
    if name == "higgs":
        assert batch.targets is not None and set(batch.targets.tolist()) <= {0.0, 1.0}
    else:
        assert (batch.inputs[~batch.valid] == 0).all()


def test_builtin_text_windows_decode_to_the_shipped_docstrings():
    from sma.data.builtin import _text_docs

    first_doc = next(_text_docs())
    window = builtin_split("text", 512, "train")[0]["ids"]
    assert len(window) <= 512
    # the first window starts with the first shipped document, byte for byte
    assert first_doc.startswith(decode(window).split("\t")[0][:400])


def test_train_epochs_reshuffle_and_ranks_are_disjoint_and_equal():
    cfg = cfg_for("model.max_len=256", "data.micro_batch_size=4")
    loaders = [build_loader(cfg, "train", r, 2) for r in range(2)]
    n = len(loaders[0])
    assert n == len(loaders[1]) > 0
    epochs = [[zip(b.inputs, b.valid) for b in itertools.islice(iter(ld), 2 * n)] for ld in loaders]
    seen = Counter(tuple(row[valid].tolist()) for e in epochs for b in e[:n] for row, valid in b)
    corpus = Counter(tuple(s["ids"].tolist()) for s in builtin_split("text", 256, "train"))
    assert sum(seen.values()) == 2 * n * 4
    assert not seen - corpus  # no window more often in one epoch (both ranks) than in the corpus
    assert not torch.equal(first_batch_of(loaders[0], 0), first_batch_of(loaders[0], n))  # epoch 2 is in a different order


def first_batch_of(loader, index: int) -> torch.Tensor:
    return next(itertools.islice(iter(loader), index, None)).inputs


def test_eval_split_is_the_same_every_time():
    cfg = cfg_for("model.max_len=256", "data.micro_batch_size=4")
    ev = build_loader(cfg, "eval", 0, 1)
    a, b = [x.inputs for x in ev], [x.inputs for x in ev]
    assert len(a) == len(ev) > 0 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_builtin_resume_continues_exactly_across_an_epoch_boundary():
    cfg = cfg_for("model.max_len=256", "data.micro_batch_size=4", "seed=3")
    ref = build_loader(cfg, "train", 1, 2)
    n = len(ref)
    expected = [b.inputs for b in itertools.islice(iter(ref), n + 5)]
    first = build_loader(cfg, "train", 1, 2)
    it = iter(first)
    for _ in range(n - 2):
        next(it)
    state = first.state_dict()
    resumed = build_loader(cfg, "train", 1, 2)
    resumed.load_state_dict(state)
    got = [b.inputs for b in itertools.islice(iter(resumed), 7)]
    assert all(torch.equal(x, y) for x, y in zip(got, expected[n - 2:]))


def test_seed_changes_the_order():
    a = next(iter(build_loader(cfg_for("model.max_len=256", "seed=0"), "train", 0, 1))).inputs
    b = next(iter(build_loader(cfg_for("model.max_len=256", "seed=1"), "train", 0, 1))).inputs
    assert not torch.equal(a, b)
