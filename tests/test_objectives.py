"""Loss arithmetic, checked against numbers worked out by hand in each test."""

import math

import pytest
import torch

from diffalign.objectives import PairErrors, get_objective
from diffalign.objectives.dpo import dpo_link
from diffalign.objectives.mapo import mapo_f


def _errors(pw, pl, rw=None, rl=None):
    t = lambda v: None if v is None else torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return PairErrors(t(pw), t(pl), t(rw), t(rl))


def test_dpo_is_log2_when_policy_equals_reference():
    e = _errors([0.3, 0.1, 0.7], [0.2, 0.5, 0.4], [0.3, 0.1, 0.7], [0.2, 0.5, 0.4])
    loss, metrics = get_objective("dpo", beta=5000).loss(e)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert metrics["implicit_acc"] == 0.5  # every margin is 0: ties count one half


def test_dpo_beta_carries_the_half_and_averages_log_sigmoid():
    # Pair 1: h = (0.5 - 0.4) - (0.5 - 0.5) = 0.1  -> z = (β/2) h = 0.5 * 10 * 0.1 = 0.5
    # Pair 2: h = (0.2 - 0.3) - (0.2 - 0.2) = -0.1 -> z = -0.5
    e = _errors([0.4, 0.3], [0.5, 0.2], [0.5, 0.2], [0.5, 0.2])
    loss, metrics = get_objective("dpo", beta=10).loss(e)
    expected = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(0.5))) / 2  # mean of -log σ(z)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # log σ of the mean margin would be log 2 here (mean h = 0): the two conventions must differ.
    assert abs(expected - math.log(2)) > 1e-3
    assert metrics["implicit_acc"] == 0.5 and metrics["margin"] == pytest.approx(0.0, abs=1e-7)


def test_dpo_sft_weight_adds_the_winners_mean_error():
    # The pairs above (loss `expected`) plus λ · mean m_θ(w) = 0.5 * (0.4 + 0.3) / 2 = 0.175.
    e = _errors([0.4, 0.3], [0.5, 0.2], [0.5, 0.2], [0.5, 0.2])
    plain, _ = get_objective("dpo", beta=10).loss(e)
    with_sft, _ = get_objective("dpo", beta=10, sft_weight=0.5).loss(e)
    assert with_sft.item() == pytest.approx(plain.item() + 0.175, rel=1e-6)
    # β = 0 leaves the SFT term alone: its gradient is λ / B on each winner error, nothing on the losers.
    pw, pl = torch.tensor([0.4, 0.3], requires_grad=True), torch.tensor([0.5, 0.2], requires_grad=True)
    loss, _ = get_objective("tdpo", beta=0.0, sft_weight=0.5).loss(PairErrors(pw, pl, e.ref_w, e.ref_l))
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2) + 0.175, rel=1e-6)
    assert torch.allclose(pw.grad, torch.tensor([0.25, 0.25])) and torch.equal(pl.grad, torch.zeros(2))
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="sft_weight must be a finite number >= 0"):
            get_objective("dpo", sft_weight=bad)


def test_tdpo_sft_term_reads_the_winner_errors_while_the_clip_stops_the_loser():
    # ρ = 0.1, β = 10, λ = 0.5, one pair: policy_l 0.60 > 1.1 * 0.50 -> clipped to 0.55; g_w = 0.05, h = 0.10,
    # z = 0.5. d/dm_w [-log σ((β/2)(m_ref_w - m_w - ...))] = (β/2) σ(-z) = 5 σ(-0.5); the SFT term adds λ / B = 0.5.
    pw, pl = torch.tensor([0.45], requires_grad=True), torch.tensor([0.60], requires_grad=True)
    loss, metrics = get_objective("tdpo", beta=10.0, negative_clip=0.1, sft_weight=0.5).loss(
        PairErrors(pw, pl, torch.tensor([0.50]), torch.tensor([0.50])))
    loss.backward()
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.5)) + 0.5 * 0.45, rel=1e-6)
    assert pw.grad.item() == pytest.approx(5 / (1 + math.exp(0.5)) + 0.5, rel=1e-6)
    assert pl.grad.item() == 0 and metrics["sft_term"] == pytest.approx(0.225, rel=1e-6)


@pytest.mark.parametrize("h,beta,link,eps,tau,expected", [
    (0.1, 10, "hinge", 0.0, 1.0, 0.5),                                   # relu(1 - 5*0.1)
    (0.3, 10, "hinge", 0.0, 1.0, 0.0),                                   # relu(1 - 1.5)
    (0.1, 10, "ipo", 0.0, 2.0, (0.1 - 0.25) ** 2),                       # (h - 1/(2τ))²
    (0.2, 10, "cdpo", 0.1, 1.0,                                          # z = 1
     0.9 * math.log(1 + math.exp(-1)) + 0.1 * math.log(1 + math.exp(1))),
    (0.2, 10, "rdpo", 0.1, 1.0,
     (0.9 * math.log(1 + math.exp(-1)) - 0.1 * math.log(1 + math.exp(1))) / 0.8),
    (0.2, 10, "sigmoid", 0.0, 1.0, math.log(1 + math.exp(-1))),
])
def test_dpo_links_against_hand_math(h, beta, link, eps, tau, expected):
    got = dpo_link(torch.tensor([h]), beta, link, eps, tau).item()
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_dpo_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown DPO link 'logistic'"):
        get_objective("dpo", link="logistic")
    with pytest.raises(ValueError, match="flip rate"):
        get_objective("dpo", link="rdpo", epsilon=0.5)
    with pytest.raises(ValueError, match="unknown method 'orpo'"):
        get_objective("orpo")


def test_dpo_gradient_pushes_winner_error_down_and_loser_error_up():
    pw = torch.tensor([0.3], requires_grad=True)
    pl = torch.tensor([0.3], requires_grad=True)
    loss, _ = get_objective("dpo", beta=100).loss(PairErrors(pw, pl, torch.tensor([0.3]), torch.tensor([0.3])))
    loss.backward()
    assert pw.grad.item() > 0 > pl.grad.item()  # gradient descent lowers m_w, raises m_l


def test_mapo_f_is_stable_and_exact_near_zero():
    m = torch.tensor([0.0, 1e-9, 1e-5, 0.2, 2.0], dtype=torch.float32)
    f = mapo_f(m, gamma=0.5)
    assert torch.isfinite(f).all() and f[0].item() == 1.0
    x = 0.5 * 0.2
    assert f[3].item() == pytest.approx(x / math.expm1(x), rel=1e-6)
    assert f[2].item() == pytest.approx(1 - 0.5 * 1e-5 / 2, rel=1e-7)
    assert (f[1:] <= f[:-1]).all() and (f[2:] < f[1:-1]).all()  # decreasing (1e-9 rounds to 1 in float32)


def test_mapo_loss_against_hand_math():
    # m_w = [0.2, 0.4], m_l = [0.4, 0.2]; γ = 0.5, T = 10, λ = 0.1
    fw = [0.1 / math.expm1(0.1), 0.2 / math.expm1(0.2)]
    fl = [0.2 / math.expm1(0.2), 0.1 / math.expm1(0.1)]
    ratio = [math.log(1 / (1 + math.exp(-10 * (a - b)))) for a, b in zip(fw, fl)]
    expected = (0.2 + 0.4) / 2 - 0.1 * sum(ratio) / 2
    loss, metrics = get_objective("mapo", lam=0.1, gamma=0.5, temperature=10).loss(_errors([0.2, 0.4], [0.4, 0.2]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["implicit_acc"] == 0.5


def test_mapo_needs_no_reference_and_dpo_does():
    assert not get_objective("mapo").needs_reference and get_objective("dpo").needs_reference
