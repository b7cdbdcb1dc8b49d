"""DDIM inversion of InPO: the grid, the update, per-row t in one batch, and the reparameterised target."""

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
