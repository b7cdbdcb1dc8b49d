"""DDIM inversion of InPO: the grid, the update, per-row t in one batch, and the reparameterised target."""

import pytest
import torch
from diffusers import DDPMScheduler

from diffalign.core.inversion import ddim_inversion_latents, grid_destinations
from diffalign.core.noise import seeded_generators
from test_core import tiny_unet


class OracleUNet(torch.nn.Module):
    """Predicts one fixed noise for every input: the DDIM inverse update must then follow the forward process
    exactly, x_u = sqrt(ᾱ_u) x0 + sqrt(1-ᾱ_u) eps, at every grid level (a check of the update's arithmetic)."""

    def __init__(self, eps):
        super().__init__()
        self.eps, self.anchor = eps, torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x, t, text):
        self.calls.append(t.tolist())
        return type("Out", (), {"sample": self.eps.expand_as(x)})


def _sched():
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, steps_offset=1)


def test_grid_is_one_then_every_hundred():
    assert grid_destinations(1000, 10, offset=1) == [1, 101, 201, 301, 401, 501, 601, 701, 801, 901]


def test_deterministic_inversion_with_the_true_noise_lands_on_the_forward_process():
    torch.manual_seed(0)
    x0, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    oracle = OracleUNet(eps)
    t = torch.tensor([550])
    x_inv, eps_star = ddim_inversion_latents(oracle, _sched(), x0, t, torch.zeros(1, 3, 16),
                                             seeded_generators(torch.tensor([1])), steps=10, eta=0.0)
    assert [c[0] for c in oracle.calls] == [1, 101, 201, 301, 401, 501]  # only levels below t
    abar = _sched().alphas_cumprod
    expected = abar[501].sqrt() * x0 + (1 - abar[501]).sqrt() * eps  # the last level reached is 501
    torch.testing.assert_close(x_inv, expected, rtol=1e-4, atol=1e-5)
    # The recorded target reproduces the inverted latent at the row's own t.
    torch.testing.assert_close(abar[550].sqrt() * x0 + (1 - abar[550]).sqrt() * eps_star, x_inv, rtol=1e-5, atol=1e-5)


def test_rows_with_different_t_in_one_batch_match_their_own_inversion():
    unet = tiny_unet().eval()
    torch.manual_seed(1)
    x0, text = torch.randn(3, 4, 8, 8), torch.randn(3, 7, 16)
    t = torch.tensor([999, 150, 0])  # 10 steps, 2 steps, none
    seeds = torch.tensor([11, 12, 13])
    x_inv, eps_star = ddim_inversion_latents(unet, _sched(), x0, t, text, seeded_generators(seeds))
    abar = _sched().alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(abar.sqrt() * x0 + (1 - abar).sqrt() * eps_star, x_inv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_inv[2], x0[2])  # t = 0: no grid level below it, x0 itself
    assert not torch.allclose(x_inv[0], x0[0]) and not torch.allclose(x_inv[1], x0[1])
    for i in range(3):  # each row alone (own t, own generator) gives the same latent: rows are independent
        alone, _ = ddim_inversion_latents(unet, _sched(), x0[i:i + 1], t[i:i + 1], text[i:i + 1],
                                          seeded_generators(seeds[i:i + 1]))
        torch.testing.assert_close(alone[0], x_inv[i], rtol=1e-4, atol=1e-5)


def test_eta_adds_noise_after_the_first_step_only():
    torch.manual_seed(0)
    x0, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    sched, text, gen = _sched(), torch.zeros(1, 3, 16), lambda: seeded_generators(torch.tensor([5]))
    det_1, _ = ddim_inversion_latents(OracleUNet(eps), sched, x0, torch.tensor([50]), text, gen(), eta=0.0)
    noisy_1, _ = ddim_inversion_latents(OracleUNet(eps), sched, x0, torch.tensor([50]), text, gen(), eta=0.1)
    torch.testing.assert_close(noisy_1, det_1)  # the step from x0 has zero posterior variance
    det, _ = ddim_inversion_latents(OracleUNet(eps), sched, x0, torch.tensor([350]), text, gen(), eta=0.0)
    noisy, _ = ddim_inversion_latents(OracleUNet(eps), sched, x0, torch.tensor([350]), text, gen(), eta=0.1)
    again, _ = ddim_inversion_latents(OracleUNet(eps), sched, x0, torch.tensor([350]), text, gen(), eta=0.1)
    assert not torch.allclose(noisy, det) and torch.equal(noisy, again)  # noisy, and reproducible from the seed


# ---- the two semantics, pinned with a constant-ε model (tests/test_inversion.py; docs/methods.md, InPO)
# For t = 50, 150, 350, 700 (SD1.5's scaled-linear schedule, 10 steps, offset 1), written out by hand from
# core/inversion.py's rules: the levels the UNet is told, and the grid level x_inv ends at.
LEVELS_TOLD = {
    "diffalign": {50: [1], 150: [1, 101], 350: [1, 101, 201, 301], 700: [1, 101, 201, 301, 401, 501, 601]},
    "authors": {50: [-99, 1], 150: [-99, 1, 101], 350: [-99, 1, 101, 201, 301],
                700: [-99, 1, 101, 201, 301, 401, 501, 601]},
}
# std of eps* with x0, the model's constant ε and the inversion noise all N(0, 1), η = 0.1: from
# Var = (c_x - sqrt(ᾱ_t))² + c_e² + Var(noise), over (1 - ᾱ_t), with x_E = c_x x0 + c_e ε + noise after the steps
# (each step is affine in x0 and ε; its noise reaches E scaled by sqrt(ᾱ_E / ᾱ_d)).
EPS_STAR_STD = {"diffalign": {50: 0.216, 150: 0.793, 350: 0.918, 700: 0.968},
                "authors": {50: 1.368, 150: 1.145, 350: 1.061, 700: 0.996}}


@pytest.mark.parametrize("semantics", ["diffalign", "authors"])
def test_each_semantics_tells_the_unet_its_levels_and_gives_eps_star_its_spread(semantics):
    torch.manual_seed(0)
    ts = [50, 150, 350, 700]
    x0, eps = torch.randn(len(ts), 4, 96, 96), torch.randn(1, 4, 96, 96)
    oracle = OracleUNet(eps)
    gens = seeded_generators(torch.arange(len(ts)) + 7)
    _, eps_star = ddim_inversion_latents(oracle, _sched(), x0, torch.tensor(ts), torch.zeros(len(ts), 3, 16), gens,
                                         semantics=semantics)
    told = {t: [] for t in ts}  # per row: every level it was told, in order
    active = [[t for t in ts if (t > d - 100 if semantics == "authors" else t > d)] for d in range(1, 902, 100)]
    for rows, call in zip(active, oracle.calls):
        assert len(call) == len(rows)
        for t, level in zip(rows, call):
            told[t].append(level)
    assert told == LEVELS_TOLD[semantics]
    for i, t in enumerate(ts):
        assert abs(eps_star[i].std().item() - EPS_STAR_STD[semantics][t]) < 0.012, (semantics, t)


def test_the_authors_first_step_starts_at_alpha_bar_zero_and_adds_noise():
    """From x0 with η > 0: diffalign's first step is the forward process exactly (ᾱ_{-99} = 1, no noise); the
    authors' starts from ᾱ_0 = alphas_cumprod[0] and adds 0.1 · σ_{-99→1} noise (σ² ≈ 4.26e-4)."""
    torch.manual_seed(3)
    x0, eps = torch.randn(1, 4, 64, 64), torch.randn(1, 4, 64, 64)
    abar = _sched().alphas_cumprod
    t = torch.tensor([1])  # authors: one step (source -99 < 1); diffalign: none (no destination below 1)
    x_a, _ = ddim_inversion_latents(OracleUNet(eps), _sched(), x0, t, torch.zeros(1, 3, 16),
                                    seeded_generators(torch.tensor([5])), semantics="authors")
    deterministic = abar[1].sqrt() * (x0 - (1 - abar[0]).sqrt() * eps) / abar[0].sqrt() + (1 - abar[1]).sqrt() * eps
    noise = x_a - deterministic
    variance = (1 - abar[0]) / (1 - abar[1]) * (1 - abar[1] / abar[0])
    assert abs(variance.item() - 4.26e-4) < 0.02e-4
    assert abs(noise.std().item() - 0.1 * variance.sqrt().item()) < 0.05 * 0.1 * variance.sqrt().item()
    x_d, _ = ddim_inversion_latents(OracleUNet(eps), _sched(), x0, t, torch.zeros(1, 3, 16),
                                    seeded_generators(torch.tensor([5])), semantics="diffalign")
    torch.testing.assert_close(x_d, x0)
