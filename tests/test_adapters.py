"""Models from diffusers and k-diffusion, and our solvers inside diffusers pipelines.

Tiny randomly initialised (seeded) diffusers models are built here: no download.
The diffusers tests skip when diffusers is missing (``pip install -e ".[peers]"``),
the k-diffusion test when k-diffusion is (``pip install --no-deps k-diffusion``).
"""

import sys

import pytest
import torch
from helpers import small_mixture

import sde_diffusion as sd
from sde_diffusion import adapters

SCHEDULES = ["linear", "squaredcos_cap_v2"]
PREDICTIONS = ["epsilon", "v_prediction"]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


def tiny_unet(diffusers, kind="UNet2DModel", **extra):
    """A seeded, randomly initialised 8x8 two-channel UNet of ``kind``."""
    torch.manual_seed(0)
    config = {
        "sample_size": 8,
        "in_channels": 2,
        "out_channels": 2,
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D"),
        "norm_num_groups": 4,
    }
    return getattr(diffusers, kind)(**{**config, **extra}).eval()


def x_T(batch=2):
    return torch.randn(batch, 2, 8, 8, generator=torch.Generator().manual_seed(1))


def run_scheduler(unet, scheduler, x, steps=10, **unet_kwargs):
    """The plain diffusers loop a pipeline runs."""
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(scheduler.scale_model_input(x, t), t, **unet_kwargs).sample
            x = scheduler.step(out, t, x).prev_sample
    return x


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(
    "scheduler, ours", [("DDIMScheduler", "ddim"), ("DPMSolverMultistepScheduler", "dpmpp_2m")]
)
def test_our_solvers_reproduce_diffusers_loops(diffusers, scheduler, ours, schedule, prediction):
    unet = tiny_unet(diffusers)
    options = {"clip_sample": False} if scheduler == "DDIMScheduler" else {}
    sched = getattr(diffusers, scheduler)(
        beta_schedule=schedule, prediction_type=prediction, **options
    )
    expected = run_scheduler(unet, sched, x_T())
    model, sde = adapters.from_diffusers(unet, sched)
    with torch.no_grad():
        res = sd.solve(model, sde, x_T(), adapters.scheduler_grid(sched, sde), ours)
    assert relative(res.x, expected) < 1e-4
    assert res.nfe == 10


def test_schedule_comes_from_the_scheduler_table(diffusers):
    """The cosine table is far from any VPSDE; the adapter's SDE matches it exactly."""
    sched = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    _, sde = adapters.from_diffusers(tiny_unet(diffusers), sched)
    t = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    abar = sched.alphas_cumprod.double()
    torch.testing.assert_close(sde.alpha(t) ** 2, abar, rtol=1e-6, atol=0)
    assert (sd.VPSDE().alpha(t) ** 2 / abar).max() > 10


def test_class_labels_reach_a_class_conditional_unet(diffusers):
    unet = tiny_unet(diffusers, num_class_embeds=3)
    sched = diffusers.DDIMScheduler(clip_sample=False)
    labels = torch.tensor([0, 2])
    expected = run_scheduler(unet, sched, x_T(), class_labels=labels)
    model, sde = adapters.from_diffusers(unet, sched)
    grid = adapters.scheduler_grid(sched, sde)
    with torch.no_grad():
        res = sd.solve(model, sde, x_T(), grid, "ddim", cond=labels)
        other = sd.solve(model, sde, x_T(), grid, "ddim", cond=torch.tensor([1, 1]))
    assert relative(res.x, expected) < 1e-4
    assert relative(other.x, expected) > 1e-3  # the label changes the images


def test_encoder_hidden_states_reach_a_cross_attention_unet(diffusers):
    unet = tiny_unet(
        diffusers,
        "UNet2DConditionModel",
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12,
        attention_head_dim=4,
    )
    sched = diffusers.DPMSolverMultistepScheduler()
    text = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(2))
    expected = run_scheduler(unet, sched, x_T(), encoder_hidden_states=text)
    model, sde = adapters.from_diffusers(unet, sched)
    grid = adapters.scheduler_grid(sched, sde)
    with torch.no_grad():
        res = sd.solve(model, sde, x_T(), grid, "dpmpp_2m", cond=text)
    assert relative(res.x, expected) < 1e-4
    with pytest.raises(sd.ConditionError, match="needs cond"):
        sd.solve(model, sde, x_T(), grid, "dpmpp_2m")


def test_a_pipeline_runs_our_solver(diffusers):
    """DDPMPipeline with DiffusersScheduler gives our sample's images on the same noise."""
    unet = tiny_unet(diffusers)
    training = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=training)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = adapters.DiffusersScheduler.from_config(
        pipe.scheduler.config, solver="dpmpp_2m"
    )
    images = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(1),
        num_inference_steps=8,
        output_type="np",
    ).images
    model, sde = adapters.from_diffusers(unet, training)
    with torch.no_grad():
        ours = sd.solve(model, sde, x_T(), sd.timesteps(sde, 8, "karras", to_zero=True), "dpmpp_2m")
    ours_images = (ours.x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert abs(images - ours_images).max() < 1e-5


def test_pipelines_take_fixed_grids_of_one_leg(diffusers):
    """A solver of two evaluations a step is asked for them one at a time (order 2);
    adaptive solvers and restart's re-noised legs do not fit a pipeline's loop."""
    config = diffusers.DDPMScheduler().config
    assert adapters.DiffusersScheduler.from_config(config, solver="heun").order == 2
    with pytest.raises(ValueError, match="'rk45' chooses its own steps or re-noises"):
        adapters.DiffusersScheduler.from_config(config, solver="rk45")
    with pytest.raises(ValueError, match="'restart' chooses its own steps or re-noises"):
        adapters.DiffusersScheduler.from_config(config, solver="restart")
    scheduler = adapters.DiffusersScheduler.from_config(config, solver="euler")
    with pytest.raises(sd.ArgumentError, match="call set_timesteps"):
        scheduler.step(torch.zeros(1, 2), 0, torch.zeros(1, 2))


def test_missing_diffusers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r'pip install "sde-diffusion\[peers\]"'):
        adapters.DiffusersScheduler.from_config({}, solver="euler")


def test_from_kdiffusion_reproduces_sample_heun():
    kd = adapters.kdiffusion_sampling()
    if kd is None:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    gmm, edm = small_mixture(), sd.EDMSDE()

    def denoiser(x, sigma):
        return gmm.denoise(edm, x, sigma)

    sigmas = kd.get_sigmas_karras(12, 0.002, 80.0, device="cpu").double()
    x = 80.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = kd.sample_heun(denoiser, x.clone(), sigmas, disable=True)
    model, sde = adapters.from_kdiffusion(denoiser)
    assert model.prediction == "x0" and sde.T == 80.0
    res = sd.solve(model, sde, x, sigmas, "heun")
    torch.testing.assert_close(res.x, expected, rtol=1e-6, atol=1e-6)
    assert res.nfe == 2 * 12 - 1


def test_kdiffusion_conditions_pass_as_keywords():
    seen = {}

    def denoiser(x, sigma, **extra):
        seen.update(extra)
        return torch.zeros_like(x)

    model, sde = adapters.from_kdiffusion(denoiser, sigma_min=0.01, sigma_max=10.0)
    labels = torch.arange(4)
    sd.sample(model, sde, (4, 2), "euler", steps=2, cond={"class_labels": labels})
    assert seen["class_labels"] is labels
    sd.sample(model, sde, (4, 2), "euler", steps=2, cond=labels)
    assert seen["cond"] is labels


@pytest.mark.parametrize(
    ("ours", "theirs", "options"),
    [
        ("euler_ancestral", "euler_ancestral", {"eta": 0.7}),
        ("dpm_2", "dpm_2", {}),
        ("dpm_2_ancestral", "dpm_2_ancestral", {}),
        ("dpmpp_2s", "dpmpp_2s_ancestral", {"eta": 0.0}),
        ("dpmpp_2s_ancestral", "dpmpp_2s_ancestral", {}),
        ("dpmpp_sde", "dpmpp_sde", {"r": 0.4}),
        ("dpmpp_2m_sde", "dpmpp_2m_sde", {}),
        ("dpmpp_2m_sde", "dpmpp_2m_sde", {"variant": "heun", "eta": 0.5}),
        ("dpmpp_3m_sde", "dpmpp_3m_sde", {"s_noise": 0.9}),
    ],
    ids=str,
)
def test_the_kdiffusion_family_equals_kdiffusion_on_one_brownian_path(ours, theirs, options):
    """Same Karras grid, x_T and Brownian path (ours given to k-diffusion as its noise
    sampler): the same samples, to float64 rounding."""
    import inspect

    kd = adapters.kdiffusion_sampling()
    if kd is None:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    gmm, edm = small_mixture(), sd.EDMSDE()
    sigmas = kd.get_sigmas_karras(12, 0.002, 80.0, device="cpu").double()
    x = 80.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = sd.BrownianNoise(x, 80.0, 0.001, seed=4)
    sampler = getattr(kd, f"sample_{theirs}")
    extra = {("solver_type" if k == "variant" else k): v for k, v in options.items()}
    if "noise_sampler" in inspect.signature(sampler).parameters:
        extra["noise_sampler"] = lambda a, b: noise(x, float(a), float(b))
    expected = sampler(
        lambda x, s: gmm.denoise(edm, x, s), x.clone(), sigmas, disable=True, **extra
    )
    res = sd.solve(gmm.score_fn(edm), edm, x, sigmas, ours, noise=noise, **options)
    torch.testing.assert_close(res.x, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore:To copy construct")  # k-diffusion re-wraps its sigmas
@pytest.mark.parametrize("order", [2, 3])
def test_dpm_adaptive_equals_kdiffusion_sample_by_sample(order):
    """k-diffusion controls the step of the whole batch; ours controls each sample's, so
    each of our samples equals k-diffusion's run on that sample alone, NFE included."""
    kd = adapters.kdiffusion_sampling()
    if kd is None:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    gmm, edm = small_mixture(), sd.EDMSDE()
    x = 80.0 * torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    options = {"order": order, "rtol": 2**-4, "atol": 2**-7}  # exact in k-diffusion's float32
    sigma_min, sigma_max = (torch.tensor(s, dtype=torch.float64) for s in (0.002, 80.0))
    theirs = [
        kd.sample_dpm_adaptive(
            lambda x, s: gmm.denoise(edm, x, s),
            row.clone(),
            sigma_min,
            sigma_max,
            disable=True,
            return_info=True,
            **options,
        )
        for row in x.split(1)
    ]
    ours = sd.solve(
        gmm.score_fn(edm), edm, x, torch.tensor([80.0, 0.002]), "dpm_adaptive", **options
    )
    torch.testing.assert_close(ours.x, torch.cat([out for out, _ in theirs]), rtol=1e-9, atol=1e-9)
    assert ours.nfe == max(info["nfe"] for _, info in theirs)
