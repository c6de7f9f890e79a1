"""The fast model (compaction, fused SDPA, masked-only decoding) equals the reference formulation, and
training is equivalent under a fixed permutation of the token order (the SMA paper)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from helpers_model import HIGGS_MASKING, TEXT_MASKING, table_batch, text_batch, tiny_perceiver, tiny_transformer
from reference import reference_first_layer_qk, reference_loss, reference_mask
from sma.config import MaskingConfig
from sma.inputs import Batch
from sma.masking import num_chosen_queries
from sma.model import build_finetune_model, build_pretrain_model, count_parameters

CASES = {
    "perceiver-text": (tiny_perceiver, TEXT_MASKING, text_batch),
    "transformer-table": (tiny_transformer, HIGGS_MASKING, table_batch),
    "transformer-text": (lambda **kw: tiny_transformer(max_len=48, modality="bytes", **kw),
                         MaskingConfig(ratio=0.3, num_per_query=2.0, head_aggregation="mean"), text_batch),
    "perceiver-table-standardized": (lambda **kw: tiny_perceiver(max_len=28, modality="continuous",
                                                                 standardize_targets=True, **kw),
                                     MaskingConfig(ratio=0.3, num_per_query=1.0, head_aggregation="random_mix"),
                                     table_batch),
}


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_loss_and_gradients_equal_reference(case):
    make_cfg, masking, make_batch = CASES[case]
    torch.manual_seed(0)
    model = build_pretrain_model(make_cfg(), masking)
    batch = make_batch()
    assert not batch.valid.all(), "the case must include padding"
    transformer = model.cfg.encoder == "transformer"
    q, k = reference_first_layer_qk(model, batch.inputs)
    n_cand = batch.valid.sum(1) if transformer else torch.full((q.shape[0],), batch.valid.shape[1])
    m = num_chosen_queries(n_cand, masking.ratio, masking.num_per_query)
    g = torch.Generator().manual_seed(3)
    candidates = batch.valid if transformer else torch.ones(q.shape[0], q.shape[2], dtype=torch.bool)
    noise = torch.rand(candidates.shape, generator=g).masked_fill(~candidates, -1)
    order = torch.argsort(noise, 1, descending=True)
    chosen = torch.stack([torch.where(torch.arange(order.shape[1]) < m[i], order[i], -1) for i in range(len(m))])
    chosen = chosen[:, : int(m.max())]

    fast = model(batch, chosen=chosen, generator=torch.Generator().manual_seed(9))
    fast.loss.backward()
    fast_grads = _grads(model)
    model.zero_grad()

    with torch.no_grad():
        ref_mask = reference_mask(q, k, batch.valid, ratio=masking.ratio, num_per_query=masking.num_per_query,
                                  head_aggregation=masking.head_aggregation, mask_self=masking.mask_self,
                                  chosen=chosen, generator=torch.Generator().manual_seed(9))
    assert torch.equal(fast.mask, ref_mask)
    ref = reference_loss(model, batch.inputs, batch.valid, ref_mask)
    ref.backward()
    ref_grads = _grads(model)
    torch.testing.assert_close(fast.loss, ref, rtol=1e-5, atol=1e-6)
    assert fast_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def _permute_model(model, perm):
    """Permute the rows of every per-position parameter (and the position-identity buffer)."""
    permuted = copy.deepcopy(model)
    with torch.no_grad():
        permuted.backbone.embed.position.copy_(model.backbone.embed.position[perm])
        permuted.backbone.position_ids.copy_(model.backbone.position_ids[perm])
        if model.decoder_position is not None:
            permuted.decoder_position.copy_(model.decoder_position[perm])
    return permuted


def _train(model, batches, steps, seed):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    torch.manual_seed(seed)
    losses = []
    for step in range(steps):
        out = model(batches[step % len(batches)], progress=step / steps)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    return losses


@pytest.mark.parametrize("case", ["perceiver-text", "transformer-table"])
@pytest.mark.parametrize("mode", ["guided", "random", "curriculum", "position-keys"])
def test_training_is_equivalent_under_a_fixed_permutation(case, mode):
    make_cfg, masking, make_batch = CASES[case]
    masking = dataclasses.replace(masking, mode="random" if mode == "random" else "guided",
                           select_initial_ratio=1.0 if mode == "curriculum" else 0.0,
                           curriculum_fraction=0.5 if mode == "curriculum" else 0.0,
                           selection_keys="position" if mode == "position-keys" else "content")
    torch.manual_seed(0)
    model = build_pretrain_model(make_cfg(), masking)
    batch = make_batch()
    n = batch.valid.shape[1]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    permuted_batch = Batch(batch.inputs[:, perm], batch.valid[:, perm])
    batches = [batch, Batch(batch.inputs.flip(0), batch.valid.flip(0))]
    permuted_batches = [permuted_batch, Batch(permuted_batch.inputs.flip(0), permuted_batch.valid.flip(0))]
    permuted_model = _permute_model(model, perm)
    base = _train(model, batches, steps=5, seed=4)
    permuted = _train(permuted_model, permuted_batches, steps=5, seed=4)
    assert len(set(base)) > 1, "losses should change as the model trains"
    assert base == pytest.approx(permuted, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("case", ["perceiver-text", "transformer-table"])
def test_position_keys_choose_masks_blind_to_token_content(case):
    with torch.random.fork_rng():  # seeds its own draws and leaves the global RNG as it found it
        _check_position_keys_blind_to_content(*CASES[case])


def _check_position_keys_blind_to_content(make_cfg, masking, make_batch):
    batch = make_batch()
    torch.manual_seed(7)  # other contents (not table_batch's seed), the same padding
    noise = torch.randint(6, 262, batch.valid.shape) if batch.is_discrete else torch.randn_like(batch.inputs)
    other = Batch(noise * (batch.valid if batch.is_discrete else batch.valid[..., None]), batch.valid)

    def masks(keys):
        torch.manual_seed(1)
        model = build_pretrain_model(make_cfg(), dataclasses.replace(masking, selection_keys=keys))
        with torch.no_grad():  # sharp first-layer attention (at init it is nearly uniform)
            for p in model.parameters():
                if p.ndim == 2:
                    p.normal_(std=0.5)
            # the same weights and seed for both batches
            return [model(b, generator=torch.Generator().manual_seed(3)).mask for b in (batch, other)]

    content = masks("content")
    assert not torch.equal(*content), "with content keys the choice depends on what the tokens are"
    by_position = masks("position")
    assert torch.equal(*by_position)
    assert not torch.equal(by_position[0], content[0])


def test_batch_with_a_sample_without_masked_tokens_gives_finite_loss():
    model = build_pretrain_model(tiny_perceiver(), TEXT_MASKING)
    batch = text_batch()
    valid = batch.valid.clone()
    valid[2] = False
    valid[2, 0] = True  # one valid token: nothing can be masked there
    out = model(Batch(batch.inputs, valid))
    assert out.mask[2].sum() == 0 and out.mask.sum() > 0
    assert torch.isfinite(out.loss)
    out.loss.backward()
    # Even a batch where nothing at all is masked gives a finite loss with a gradient path.
    single = Batch(batch.inputs[:, :1].clone(), batch.valid[:, :1].clone())
    out = model(single)
    assert out.mask.sum() == 0 and out.loss.item() == 0.0
    out.loss.backward()


@pytest.mark.parametrize("make_cfg,masking,make_batch", [CASES["perceiver-text"], CASES["transformer-table"]])
def test_activation_checkpointing_gives_identical_loss_and_gradients(make_cfg, masking, make_batch):
    torch.manual_seed(0)
    plain = build_pretrain_model(make_cfg(), masking)
    ckpt = build_pretrain_model(make_cfg(activation_checkpointing=True), masking)
    ckpt.load_state_dict(plain.state_dict())
    batch = make_batch()
    losses, grads = [], []
    for model in (plain, ckpt):
        out = model(batch, generator=torch.Generator().manual_seed(0))
        out.loss.backward()
        losses.append(out.loss)
        grads.append(_grads(model))
    torch.testing.assert_close(losses[0], losses[1])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_evaluation_masks_are_reproducible_with_a_fixed_generator():
    model = build_pretrain_model(tiny_perceiver(), TEXT_MASKING).eval()
    batch = text_batch()
    with torch.no_grad():
        a = model(batch, generator=torch.Generator().manual_seed(123))
        b = model(batch, generator=torch.Generator().manual_seed(123))
        c = model(batch, generator=torch.Generator().manual_seed(124))
    assert torch.equal(a.mask, b.mask) and a.loss.item() == b.loss.item()
    assert not torch.equal(a.mask, c.mask)


@pytest.mark.parametrize("task,targets,outputs", [
    ("classification", torch.tensor([0, 2, 1, 1, 0, 2]), 3),
    ("binary", torch.tensor([[1.0], [0.0], [1.0], [0.0], [1.0], [1.0]]), 1),
    ("regression", torch.randn(6, 2), 2),
])
def test_finetune_head_trains_from_a_pretrained_encoder(task, targets, outputs):
    torch.manual_seed(0)  # the same initial weights whatever ran before
    cfg = tiny_transformer()
    pre = build_pretrain_model(cfg, HIGGS_MASKING)
    head = build_finetune_model(cfg, num_outputs=outputs, task=task)
    head.load_encoder_state_dict(pre.state_dict())
    for name, value in head.backbone.state_dict().items():
        torch.testing.assert_close(value, pre.backbone.state_dict()[name])
    batch = table_batch()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    first = None
    for _ in range(15):
        loss = head.loss(head(batch), targets)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = head.loss(head(batch), targets).item()  # after the last step
    assert head(batch).shape == (6, outputs)
    assert final < first


def test_finetune_head_rejects_a_non_sma_state_dict():
    head = build_finetune_model(tiny_transformer(), num_outputs=2)
    with pytest.raises(KeyError, match="backbone"):
        head.load_encoder_state_dict({"encoder.weight": torch.zeros(1)})


def test_tied_decoder_positions_and_output_embedding():
    cfg = tiny_perceiver(tie_decoder_positions=True, tie_output_embedding=True)
    model = build_pretrain_model(cfg, TEXT_MASKING)
    assert model.decoder_position is None
    assert model.decoder.out.weight is model.backbone.embed.token.weight
    untied = build_pretrain_model(tiny_perceiver(), TEXT_MASKING)
    assert count_parameters(model) < count_parameters(untied)
    out = model(text_batch())
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_data_that_does_not_fit_the_model_raises_a_clear_error():
    from sma.inputs import InputError

    text_model = build_pretrain_model(tiny_perceiver(max_len=16), TEXT_MASKING)
    with pytest.raises(InputError, match="max_len is 16"):
        text_model(text_batch(max_len=48))
    with pytest.raises(InputError, match=r"\(B, n\) byte ids"):
        text_model(table_batch(n=16))
    table_model = build_pretrain_model(tiny_transformer(), HIGGS_MASKING)
    with pytest.raises(InputError, match="d_raw=1"):
        table_model(Batch(torch.zeros(2, 28, 3), torch.ones(2, 28, dtype=torch.bool)))
