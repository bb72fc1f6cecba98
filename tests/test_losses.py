"""Adaptive-threshold loss (eq. 13) and threshold decoding (docre.model.losses)."""
from __future__ import annotations

import math

import pytest
import torch

from docre.model.losses import adaptive_threshold_loss, threshold_decode


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# one pair, three classes: column 0 is the threshold class TH
LOGITS = [0.5, 2.0, -1.0]


def test_positive_pair_hand_computed():
    """Relation 1 is positive, relation 2 negative.

    positive part: softmax over {TH, r1}:   -log(e^2.0 / (e^0.5 + e^2.0))
    negative part: softmax over {TH, r2}:   -log(e^0.5 / (e^0.5 + e^-1.0))
    """
    expected = (-math.log(math.exp(2.0) / (math.exp(0.5) + math.exp(2.0)))
                - math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(-1.0))))
    loss = adaptive_threshold_loss(torch.tensor([LOGITS]), torch.tensor([[0.0, 1.0, 0.0]]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(math.log(1 + math.exp(-1.5)) + math.log(1 + math.exp(-1.5)))


def test_negative_pair_hand_computed():
    """No relation (column 0 set): only TH against every relation, -log(e^0.5 / (e^0.5 + e^2.0 + e^-1.0))."""
    expected = -math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(2.0) + math.exp(-1.0)))
    loss = adaptive_threshold_loss(torch.tensor([LOGITS]), torch.tensor([[1.0, 0.0, 0.0]]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # a row with nothing set is a negative too (column 0 is ignored by the loss)
    same = adaptive_threshold_loss(torch.tensor([LOGITS]), torch.tensor([[0.0, 0.0, 0.0]]))
    assert same.item() == pytest.approx(expected, rel=1e-6)


def test_two_positives_and_mean_over_pairs():
    """Both relations positive: one softmax over {TH} + all positives (eq. 13), each positive's -log summed;
    the negative part is softmax over {TH} alone, -log 1 = 0. Pairs are averaged."""
    z = math.exp(0.5) + math.exp(2.0) + math.exp(-1.0)
    both = -math.log(math.exp(2.0) / z) - math.log(math.exp(-1.0) / z) - math.log(math.exp(0.5) / math.exp(0.5))
    neg = -math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(2.0) + math.exp(-1.0)))
    logits = torch.tensor([LOGITS, LOGITS])
    labels = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert adaptive_threshold_loss(logits, labels).item() == pytest.approx((both + neg) / 2, rel=1e-6)


def test_gradient_pushes_positives_above_threshold():
    logits = torch.tensor([LOGITS], requires_grad=True)
    adaptive_threshold_loss(logits, torch.tensor([[0.0, 1.0, 0.0]])).backward()
    g = logits.grad[0]
    assert g[1] < 0  # gradient descent raises the positive relation
    assert g[2] > 0  # and lowers the negative one
    # a few descent steps put the positive above TH and the negative below it
    x = torch.tensor([[0.5, -1.0, 2.0]], requires_grad=True)  # wrong order to start with
    labels = torch.tensor([[0.0, 1.0, 0.0]])
    opt = torch.optim.SGD([x], lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        adaptive_threshold_loss(x, labels).backward()
        opt.step()
    assert x[0, 1] > x[0, 0] > x[0, 2]


def test_negative_pair_gradient_lowers_relations_below_threshold():
    logits = torch.tensor([LOGITS], requires_grad=True)
    adaptive_threshold_loss(logits, torch.tensor([[1.0, 0.0, 0.0]])).backward()
    g = logits.grad[0]
    assert g[0] < 0 and g[1] > 0 and g[2] > 0


def test_loss_is_finite_with_extreme_logits():
    logits = torch.tensor([[1e4, -1e4, 1e4], [-1e4, 1e4, -1e4]], requires_grad=True)
    labels = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss = adaptive_threshold_loss(logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------------- decoding

def test_decode_keeps_relations_above_threshold():
    logits = torch.tensor([[0.0, 1.0, -1.0, 0.5, 0.0]])
    assert threshold_decode(logits, max_labels=None).tolist() == [[0.0, 1.0, 0.0, 1.0, 0.0]]  # a tie is not kept


def test_decode_caps_at_max_labels_keeping_the_highest():
    logits = torch.tensor([[0.0, 1.0, 3.0, 2.0, 0.5, 4.0]])
    assert threshold_decode(logits, max_labels=2).tolist() == [[0.0, 0.0, 1.0, 0.0, 0.0, 1.0]]  # 4.0, 3.0
    out = threshold_decode(logits, max_labels=3)
    assert out.tolist() == [[0.0, 0.0, 1.0, 1.0, 0.0, 1.0]]  # 4.0, 3.0, 2.0
    assert threshold_decode(logits, max_labels=None).tolist() == [[0.0, 1.0, 1.0, 1.0, 1.0, 1.0]]
    assert threshold_decode(logits, max_labels=0).tolist() == [[0.0, 1.0, 1.0, 1.0, 1.0, 1.0]]  # 0 = no cap


def test_decode_sets_column_zero_when_nothing_beats_threshold():
    logits = torch.tensor([[2.0, 1.0, -3.0], [0.0, 0.0, 0.0], [-1.0, 0.5, -2.0]])
    out = threshold_decode(logits)
    assert out.tolist() == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    assert (out.sum(1) >= 1).all()
