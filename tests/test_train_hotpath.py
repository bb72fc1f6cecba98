"""The training hot path (issue 27) against the code it replaced, on the test fixtures.

`reference_base_forward` is a verbatim copy of the base module's forward before issue 27: the encoder's
full last-layer attention map [B, H, T, T] (`WindowedEncoder.forward`, windows stitched slice by slice),
then a Python loop over documents pooling entities (`entity_embeddings`) and building the localized
context (`localized_context`), then the pair head on concatenated [h, c] inputs. The new path must
give the same losses and the same gradients for every parameter, in training mode (dropout on, same
seed: both paths draw the same dropout masks in the same order) and through the windowed encoder.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from docre.data.atlop import read_atlop
from docre.data.batch import Example, collate
from docre.data.document import cdr_inventory
from docre.data.tokenize import encode_document
from docre.model.base import BaseOutput, entity_embeddings, localized_context
from docre.model.docre_ii import DocREModel, ModelConfig
from docre.model.inference import InferenceConfig, linear_fp32
from docre.model.losses import adaptive_threshold_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = Path(__file__).parent / "fixtures"


def reference_base_forward(base, input_ids, attention_mask, mention_pos) -> BaseOutput:
    """BaseModule.forward as it was before issue 27 (kept here as the reference)."""
    hidden, attention = base.encoder(input_ids, attention_mask)
    B = input_ids.shape[0]
    n_max = max(1, max(len(m) for m in mention_pos))
    ents, ctxs = [], []
    for b in range(B):
        e, a = entity_embeddings(hidden[b], attention[b], mention_pos[b], n_max)
        ents.append(e)
        ctxs.append(localized_context(hidden[b], a))
    ent = torch.stack(ents)
    ctx = torch.stack(ctxs)
    heads = ent[:, :, None].expand(-1, -1, n_max, -1)
    tails = ent[:, None, :].expand(-1, n_max, -1, -1)
    zs = torch.tanh(base.head_extractor(torch.cat([heads, ctx], -1)))
    zo = torch.tanh(base.tail_extractor(torch.cat([tails, ctx], -1)))
    features = base.pair_features(torch.cat([zs, zo], -1))
    logits = linear_fp32(base.classifier, features)
    mask = torch.zeros(B, n_max, dtype=torch.bool, device=input_ids.device)
    for b, m in enumerate(mention_pos):
        mask[b, :len(m)] = True
    return BaseOutput(features, logits, mask)


def cdr_model(encoder: str, window: int | None, **kw) -> DocREModel:
    torch.manual_seed(0)
    inf = InferenceConfig(num_layers=1, ffn_dim=32, predictor_dim=16)
    model = DocREModel.create(ModelConfig(encoder=encoder, feature_dim=16, iterations=2, inference=inf, **kw),
                              cdr_inventory())
    if window:
        model.base.encoder.max_length, model.base.encoder.overlap = window, 8
    return model


def fixture_batch(model: DocREModel):
    with open(FIXTURES / "cdr_sample.data") as f:
        docs = list(read_atlop(f, "cdr_sample.data"))
    examples = [Example.from_row(encode_document(d, model.tokenizer, model.inventory)) for d in docs]
    return collate(examples, model.inventory, model.tokenizer.pad_token_id or 0)


def grads_of(model: DocREModel) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("window", [None, 24])  # one window per document / windows of 24 with overlap 8
@pytest.mark.parametrize("head", ["fnn", "bilinear"])
def test_stage1_losses_and_gradients_equal_the_reference(tiny_encoder, window, head):
    kw = {"base_head": "bilinear", "emb_dim": 32, "bilinear_block": 8} if head == "bilinear" else {}
    new, old = cdr_model(tiny_encoder, window, **kw), cdr_model(tiny_encoder, window, **kw)
    old.load_state_dict(new.state_dict())
    batch = fixture_batch(new)
    if window:
        assert batch.input_ids.shape[1] > window  # the windowed path
    opt_new = torch.optim.SGD(new.parameters(), lr=0.1)
    opt_old = torch.optim.SGD(old.parameters(), lr=0.1)
    new.train()
    old.train()
    cand = batch.candidate_mask
    for step in range(3):  # the first steps: each starts from the weights the previous one left
        torch.manual_seed(100 + step)
        loss_new, _ = new.stage1_loss(batch)
        torch.manual_seed(100 + step)
        out = reference_base_forward(old.base, batch.input_ids, batch.attention_mask, batch.mention_pos)
        loss_old = adaptive_threshold_loss(out.logits[cand], batch.labels[cand])
        torch.testing.assert_close(loss_new, loss_old, atol=1e-6, rtol=1e-5)
        opt_new.zero_grad()
        opt_old.zero_grad()
        loss_new.backward()
        loss_old.backward()
        g_new, g_old = grads_of(new), grads_of(old)
        assert g_new.keys() == g_old.keys() and len(g_new) > 10
        for k in g_old:
            torch.testing.assert_close(g_new[k], g_old[k], atol=1e-6, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
        opt_new.step()
        opt_old.step()


@pytest.mark.parametrize("window", [None, 24])
def test_base_forward_equals_the_reference_in_eval(tiny_encoder, window):
    model = cdr_model(tiny_encoder, window).eval()
    batch = fixture_batch(model)
    with torch.no_grad():
        new = model.run_base(batch)
        old = reference_base_forward(model.base, batch.input_ids, batch.attention_mask, batch.mention_pos)
    torch.testing.assert_close(new.features, old.features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new.logits, old.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(new.entity_mask, old.entity_mask)


def reference_stage2_loss(model: DocREModel, batch, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """DocREModel.stage2_loss as it was before issue 27 (the two views one after the other), on the
    reference base forward; the noise functions are today's (vectorised: same seed, same noise)."""
    from docre.model.inference import pair_mask_from_entities
    from docre.model.losses import reversed_view, simclr_loss, simsiam_loss
    cfg = model.config
    out = reference_base_forward(model.base, batch.input_ids, batch.attention_mask, batch.mention_pos)
    cand, labels, emask = batch.candidate_mask, batch.labels, out.entity_mask
    ids = model.relation_ids(out, batch)
    f0 = out.features
    r_bar = model.inference.relation_matrix(model.noisy_relations(ids, cand, generator), emask)
    logits_bar, m_bar = model.inference(f0, r_bar, emask)
    losses = {"loss_inference": adaptive_threshold_loss(logits_bar[cand], labels[cand])}
    if cfg.stage2_base_loss:
        losses["loss_base"] = adaptive_threshold_loss(out.logits[cand], labels[cand])
    if cfg.contrastive != "none":
        r_hat = model.inference.relation_matrix(model.noisy_relations(ids, cand, generator), emask)
        m_hat = reversed_view(model.inference, f0, r_hat, emask)
        pair_mask = pair_mask_from_entities(emask)
        if cfg.contrastive == "simsiam":
            losses["loss_contrastive"] = simsiam_loss(model.inference.predictor, m_bar, m_hat, pair_mask)
        else:
            losses["loss_contrastive"] = simclr_loss(m_bar, m_hat, pair_mask)
        if cfg.loss_weights == "release":
            losses["loss_inference2"] = adaptive_threshold_loss(model.inference.classifier_logits(m_hat)[cand],
                                                                labels[cand])
    if cfg.loss_weights == "release":
        loss = sum(v / 10 for k, v in losses.items() if k != "loss_contrastive")
        loss = (loss + losses.get("loss_contrastive", 0.0)) / 2
    else:
        loss = sum(v for k, v in losses.items() if k != "loss_contrastive")
        if "loss_contrastive" in losses:
            loss = loss + cfg.contrastive_weight * losses["loss_contrastive"]
    return loss, {k: v.item() for k, v in losses.items()}


@pytest.mark.parametrize("variant", [{}, {"loss_weights": "release"}, {"contrastive": "simclr"},
                                     {"contrastive": "none"}, {"noise": "release_gold"}])
def test_stage2_losses_and_gradients_equal_the_reference(tiny_encoder, variant):
    """Eval mode (no dropout): the two views in one stacked pass of the inference module equal two calls."""
    new, old = cdr_model(tiny_encoder, 24, **variant), cdr_model(tiny_encoder, 24, **variant)
    old.load_state_dict(new.state_dict())
    new.eval()
    old.eval()
    batch = fixture_batch(new)
    opt_new = torch.optim.SGD(new.parameters(), lr=0.1)
    opt_old = torch.optim.SGD(old.parameters(), lr=0.1)
    for step in range(2):
        loss_new, parts_new = new.stage2_loss(batch, torch.Generator().manual_seed(step))
        loss_old, parts_old = reference_stage2_loss(old, batch, torch.Generator().manual_seed(step))
        assert parts_new.keys() == parts_old.keys()
        for k in parts_old:
            assert parts_new[k] == pytest.approx(parts_old[k], rel=1e-5, abs=1e-6), k
        opt_new.zero_grad()
        opt_old.zero_grad()
        loss_new.backward()
        loss_old.backward()
        g_new, g_old = grads_of(new), grads_of(old)
        assert g_new.keys() == g_old.keys()
        for k in g_old:
            torch.testing.assert_close(g_new[k], g_old[k], atol=1e-6, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
        opt_new.step()
        opt_old.step()
