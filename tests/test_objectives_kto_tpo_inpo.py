"""KTO, TKTO, TDPO and InPO arithmetic against numbers worked out by hand."""

import math

import pytest
import torch

from diffalign.objectives import PairErrors, get_objective

sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731


def _t(values):
    return torch.tensor(values, dtype=torch.float32)


def _kto(policy, ref, labels, **options):
    return get_objective("kto", **options).row_loss(_t(policy), _t(ref), {"labels": _t(labels)})


def test_kto_sigmoid_with_the_clamped_batch_mean_reference_point():
    # g = ref - policy = [0.2, -0.1, 0.5, 0.0]; mean 0.15 -> z0 = 0.15; β = 2
    # u = β y (g - z0) = 2 * [+1*0.05, -1*(-0.25), +1*0.35, -1*(-0.15)] = [0.1, 0.5, 0.7, 0.3]
    loss, metrics = _kto([0.3, 0.6, 0.0, 0.4], [0.5, 0.5, 0.5, 0.4], [1, -1, 1, -1], beta=2.0)
    expected = sum(1 - sig(u) for u in (0.1, 0.5, 0.7, 0.3)) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert metrics["z0"] == pytest.approx(0.15, abs=1e-6) and metrics["implicit_acc"] == 1.0


def test_kto_reference_point_is_clamped_at_zero_and_lambdas_weight_the_classes():
    # g = [-0.2, -0.4]; mean -0.3 -> z0 = 0. u = 1 * [+1*(-0.2), -1*(-0.4)] = [-0.2, 0.4]
    loss, metrics = _kto([0.7, 0.9], [0.5, 0.5], [1, -1], beta=1.0, lambda_desirable=2.0, lambda_undesirable=0.5)
    assert metrics["z0"] == 0.0
    assert loss.item() == pytest.approx((2.0 * (1 - sig(-0.2)) + 0.5 * (1 - sig(0.4))) / 2, abs=1e-6)


@pytest.mark.parametrize("utility,per_row", [("loss_averse", lambda u: 1 + math.log(1 + math.exp(-u))),
                                             ("risk_seeking", lambda u: 1 - math.log(1 + math.exp(u)))])
def test_kto_utilities(utility, per_row):
    # The authors' reported form λ(1 - h): h = log σ(u) (loss_averse), h = -log σ(-u) (risk_seeking_3)
    # g = [0.2, -0.2], mean 0 -> z0 = 0; β 3: u = [0.6, 0.6]
    loss, _ = _kto([0.3, 0.7], [0.5, 0.5], [1, -1], beta=3.0, utility=utility)
    assert loss.item() == pytest.approx(per_row(0.6), abs=1e-6)


def test_kto_class_means_reference_point():
    # g = [0.4, 0.2, 0.0] desirable, [0.3] undesirable: class means 0.2 and 0.3 -> z0 = 0.25 (batch mean is 0.225)
    _, metrics = _kto([0.1, 0.3, 0.5, 0.2], [0.5, 0.5, 0.5, 0.5], [1, 1, 1, -1], beta=1.0,
                      reference_point="class_means")
    assert metrics["z0"] == pytest.approx(0.25, abs=1e-6)


def test_kto_mismatched_reference_point_uses_only_the_detached_rolled_rows():
    kto = get_objective("kto", beta=1.0, reference_point="mismatched")
    batch = {"row_image": torch.arange(2), "row_text": torch.arange(2), "row_group": torch.arange(2),
             "labels": _t([1, -1])}
    grown = kto.prepare_batch(batch)
    assert grown["row_text"].tolist() == [0, 1, 1, 0] and grown["row_image"].tolist() == [0, 1, 0, 1]
    assert grown["row_detached"].tolist() == [False, False, True, True]
    # live g = [0.1, 0.3]; mismatched g = [0.05, 0.15] -> z0 = 0.1; u = [1*(0.0), -1*(0.2)] = [0, -0.2]
    loss, metrics = kto.row_loss(_t([0.4, 0.2, 0.45, 0.35]), _t([0.5, 0.5, 0.5, 0.5]), grown)
    assert metrics["z0"] == pytest.approx(0.1, abs=1e-6)
    assert loss.item() == pytest.approx(((1 - sig(0.0)) + (1 - sig(-0.2))) / 2, abs=1e-6)


def test_kto_authors_rule_leaves_class_means_and_mismatched_unclamped_and_counts_an_absent_class_as_zero():
    # g = [-0.4, -0.2] desirable, [-0.6] undesirable: class means -0.3 and -0.6.
    #   diffalign: max(0, ½(-0.3 - 0.6)) = 0;  authors: ½(-0.3 - 0.6) = -0.45 (no clamp)
    args = ([0.9, 0.7, 1.1], [0.5, 0.5, 0.5], [1, 1, -1])
    assert _kto(*args, beta=1.0, reference_point="class_means")[1]["z0"] == 0.0
    _, authors = _kto(*args, beta=1.0, reference_point="class_means", reference_point_rule="authors")
    assert authors["z0"] == pytest.approx(-0.45, abs=1e-5)
    # Only desirable rows, g = [0.4, 0.2]: diffalign z0 = 0.3 (the class present); authors ½(0.3 + 0/(0 + 1e-6)) = 0.15
    one_class = ([0.1, 0.3], [0.5, 0.5], [1, 1])
    assert _kto(*one_class, beta=1.0, reference_point="class_means")[1]["z0"] == pytest.approx(0.3, abs=1e-6)
    _, authors = _kto(*one_class, beta=1.0, reference_point="class_means", reference_point_rule="authors")
    assert authors["z0"] == pytest.approx(0.15, abs=1e-6)
    # mismatched with negative rewards: live g = [0.1, 0.3]; mismatched g = [-0.3, -0.1] -> authors -0.2, ours 0
    kto = get_objective("kto", beta=1.0, reference_point="mismatched", reference_point_rule="authors")
    batch = kto.prepare_batch({"row_image": torch.arange(2), "row_text": torch.arange(2),
                               "row_group": torch.arange(2), "labels": _t([1, -1])})
    _, metrics = kto.row_loss(_t([0.4, 0.2, 0.8, 0.6]), _t([0.5, 0.5, 0.5, 0.5]), batch)
    assert metrics["z0"] == pytest.approx(-0.2, abs=1e-6)
    # the batch mean stays clamped under both rules
    assert _kto([0.7, 0.9], [0.5, 0.5], [1, -1], reference_point_rule="authors")[1]["z0"] == 0.0


def test_kto_rules_weigh_processes_by_rows_or_equally():
    """Two processes, simulated: rank 0 has g = [0.1, 0.1, 0.1] (mean 0.1), rank 1 g = [0.4] (mean 0.4).
    diffalign weighs by rows: (3·0.1 + 1·0.4)/4 = 0.175; the authors average the ranks: (0.1 + 0.4)/2 = 0.25."""
    ranks = {"values": [], "weights": []}

    def two_ranks(value, weight):  # this rank's (value, weight), and rank 1's 0.4 with weight 1 under both rules
        other_weight = 1.0
        ranks["values"].append(value.item())
        ranks["weights"].append(weight.item())
        return (value * weight + 0.4 * other_weight) / (weight + other_weight)

    for rule, expected in (("diffalign", 0.175), ("authors", 0.25)):
        kto = get_objective("kto", beta=1.0, reference_point_rule=rule)
        kto.bind_processes(two_ranks)
        _, metrics = kto.row_loss(_t([0.4, 0.4, 0.4]), _t([0.5, 0.5, 0.5]), {"labels": _t([1, -1, 1])})
        assert metrics["z0"] == pytest.approx(expected, abs=1e-6), rule
    assert ranks["weights"] == [3.0, 1.0]


def test_kto_options_are_validated():
    with pytest.raises(ValueError, match="unknown KTO utility 'convex'"):
        get_objective("kto", utility="convex")
    with pytest.raises(ValueError, match="unknown KTO reference_point"):
        get_objective("kto", reference_point="median")
    with pytest.raises(ValueError, match="unknown KTO reference_point_rule 'paper'"):
        get_objective("kto", reference_point_rule="paper")
    assert get_objective("tkto").pair_axis == "captions" and get_objective("kto").pair_axis == "single"


def test_tdpo_clips_the_negative_term_and_its_gradient():
    # ρ = 0.1. Pair 1: policy_l 0.60 > 1.1 * ref_l 0.50 = 0.55 -> clipped to 0.55.
    #   g_w = 0.50 - 0.45 = 0.05, g_l = 0.50 - 0.55 = -0.05, h = 0.10, z = (β/2) h = 0.5
    # Pair 2: policy_l 0.52 < 0.55 -> kept: g_w = 0, g_l = -0.02, h = 0.02, z = 0.1
    policy_l = _t([0.60, 0.52]).requires_grad_()
    errors = PairErrors(_t([0.45, 0.50]), policy_l, _t([0.50, 0.50]), _t([0.50, 0.50]))
    loss, metrics = get_objective("tdpo", beta=10.0, negative_clip=0.1).loss(errors)
    expected = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(-0.1))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6) and metrics["negative_clipped"] == 0.5
    loss.backward()
    assert policy_l.grad[0] == 0 and policy_l.grad[1] != 0  # the clipped pair no longer pushes
    unclipped, _ = get_objective("tdpo", beta=10.0, negative_clip=None).loss(errors)
    assert unclipped.item() < loss.item()  # without the clip the runaway negative lowers the loss further


def test_inpo_is_dpo_on_its_errors_with_inversion_noising():
    errors = PairErrors(_t([0.4, 0.3]), _t([0.5, 0.2]), _t([0.5, 0.2]), _t([0.5, 0.2]))
    inpo = get_objective("inpo", beta=10.0, inversion_steps=5)
    assert inpo.noising == "ddim_inversion" and inpo.inversion_options == {"steps": 5, "eta": 0.1, "semantics": "authors"}
    assert inpo.loss(errors)[0].item() == pytest.approx(get_objective("dpo", beta=10.0).loss(errors)[0].item())
    with pytest.raises(ValueError, match="inversion_steps must be >= 1"):
        get_objective("inpo", inversion_steps=0)
    assert inpo.inversion_model == "policy" and get_objective("inpo", inversion_model="reference")
    with pytest.raises(ValueError, match="inversion_model must be"):
        get_objective("inpo", inversion_model="ema")
