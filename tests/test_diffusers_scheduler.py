"""Our solvers as a real diffusers scheduler: the swap idiom, save/load, add_noise, starting
mid-schedule, the timesteps and sigmas a pipeline passes, per-sample generators.

Tiny seeded diffusers models only; skipped without diffusers (``pip install -e ".[peers]"``).
"""

import inspect

import pytest
import torch
from test_adapters import tiny_unet

import sde_diffusion as sd

diffusers = pytest.importorskip("diffusers")
from sde_diffusion.adapters import (  # noqa: E402
    DiffusersScheduler,
    FlowMatchingScheduler,
    from_diffusers,
)
from sde_diffusion.diffusers_scheduler import evaluations_a_step  # noqa: E402

SD_TABLE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_the_swap_idiom_works_both_ways_and_keeps_the_table():
    theirs = diffusers.DPMSolverMultistepScheduler(
        **SD_TABLE, prediction_type="v_prediction", solver_order=3
    )
    ours = DiffusersScheduler.from_config(theirs.config, solver="unipc", spacing="logsnr")
    torch.testing.assert_close(
        ours.sde.alphas_cumprod, theirs.alphas_cumprod.double(), rtol=1e-6, atol=0
    )
    assert ours.prediction == "v" and ours.solver.name == "unipc"
    back = diffusers.DPMSolverMultistepScheduler.from_config(ours.config)
    assert torch.equal(back.alphas_cumprod, theirs.alphas_cumprod)
    assert back.config.prediction_type == "v_prediction" and back.config.solver_order == 3
    again = diffusers.EulerDiscreteScheduler.from_config(ours.config)
    assert again.config.beta_schedule == "scaled_linear"
    assert "DPMSolverMultistepScheduler" in [c.__name__ for c in ours.compatibles]


def test_a_scheduler_with_no_table_names_from_config():
    with pytest.raises(sd.ArgumentError, match=r"DiffusersScheduler\.from_config\(pipe\.scheduler"):
        DiffusersScheduler(solver="dpmpp_2m")
    config = diffusers.DDPMScheduler().config
    with pytest.raises(sd.ArgumentError, match="does not take option"):
        DiffusersScheduler.from_config(config, solver="ddim", solver_options={"etaa": 0.5})
    with pytest.raises(sd.ArgumentError, match="prediction_type 'flow' is not supported"):
        DiffusersScheduler.from_config(config, prediction_type="flow")
    scheduler = DiffusersScheduler.from_config(config)
    with pytest.raises(sd.ArgumentError, match="exactly one of num_inference_steps"):
        scheduler.set_timesteps(10, timesteps=[999, 500])


def test_save_pretrained_and_from_pretrained_reproduce_the_images(tmp_path):
    unet = tiny_unet(diffusers)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(**SD_TABLE))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DiffusersScheduler.from_config(
        pipe.scheduler.config, solver="ddim", solver_options={"eta": 0.5}
    )

    def images():
        generator = torch.Generator().manual_seed(4)
        return pipe(batch_size=2, generator=generator, num_inference_steps=6, output_type="np")

    before = images().images
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = DiffusersScheduler.from_pretrained(tmp_path / "pipe", subfolder="scheduler")
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(pipe.scheduler.config)
    assert loaded.solver.options() == pipe.scheduler.solver.options()
    pipe.scheduler = loaded
    assert (images().images == before).all()


def test_add_noise_is_ddpms():
    theirs = diffusers.DDPMScheduler(**SD_TABLE)
    ours = DiffusersScheduler.from_config(theirs.config)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 8, 8, generator=g), torch.randn(3, 2, 8, 8, generator=g)
    levels = torch.tensor([0, 421, 999])
    torch.testing.assert_close(
        ours.add_noise(x0, noise, levels), theirs.add_noise(x0, noise, levels), rtol=1e-5, atol=1e-6
    )


def _pipeline_loop(scheduler, unet, x, start=0, begin_index=True, generator=None):
    """What an img2img pipeline does from step ``start``: ``set_begin_index``, then the loop."""
    if begin_index:
        scheduler.set_begin_index(start)
    with torch.no_grad():
        for t in scheduler.timesteps[start:]:
            out = unet(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("begin_index", [True, False])
def test_a_run_that_starts_mid_schedule_steps_from_the_right_time(begin_index):
    """img2img at strength 0.6: noise the image to the schedule's step 4 of 10 and run
    the rest; equal to sd.solve on the rest of the grid (with or without set_begin_index:
    step locates its timestep)."""
    unet = tiny_unet(diffusers)
    training = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    scheduler = DiffusersScheduler.from_config(training.config, solver="dpmpp_2m")
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(2)
    image, noise = torch.randn(2, 2, 8, 8, generator=g), torch.randn(2, 2, 8, 8, generator=g)
    start = 4
    x_start = scheduler.add_noise(image, noise, scheduler.timesteps[start : start + 1])
    out = _pipeline_loop(scheduler, unet, x_start, start, begin_index)
    model, sde = from_diffusers(unet, training)
    with torch.no_grad():
        expected = sd.solve(model, sde, x_start, torch.tensor(scheduler.grid[start:]), "dpmpp_2m")
    assert relative(out, expected.x) < 1e-4  # float32, as the pipeline equality tests
    whole = torch.tensor(scheduler.grid)
    with torch.no_grad():
        from_the_top = sd.solve(model, sde, x_start, whole, "dpmpp_2m").x
    assert relative(out, from_the_top) > 1e-3  # starting elsewhere would show


def test_the_timesteps_and_sigmas_a_pipeline_passes_are_the_grid():
    config = diffusers.DDPMScheduler(**SD_TABLE).config
    scheduler = DiffusersScheduler.from_config(config, solver="euler")
    scheduler.set_timesteps(timesteps=[999, 749, 499, 249])
    assert scheduler.grid == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert scheduler.timesteps.tolist() == [999.0, 749.0, 499.0, 249.0]
    abar = scheduler.sde.alphas_cumprod
    levels = [999, 500, 10]
    sigmas = [float(((1 - abar[k]) / abar[k]).sqrt()) for k in levels] + [0.0]
    scheduler.set_timesteps(sigmas=sigmas)
    assert scheduler.timesteps.tolist() == pytest.approx([999.0, 500.0, 10.0], abs=1e-3)
    assert scheduler.grid[-1] == 0.0
    # what diffusers' retrieve_timesteps checks before it passes them
    accepted = inspect.signature(scheduler.set_timesteps).parameters
    assert {"timesteps", "sigmas", "device"} <= set(accepted)


def test_per_sample_generators_give_each_image_its_own_seed():
    """Pipelines pass one generator per image: an image does not depend on its batch.
    (In float64: in float32 the UNet's batched convolutions round differently with the
    batch size and the thread count, by up to 3e-5 here, which is not what is tested.)"""
    unet = tiny_unet(diffusers).double()
    config = diffusers.DDPMScheduler().config
    scheduler = DiffusersScheduler.from_config(config, solver="euler_ancestral")
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    scheduler.set_timesteps(5)
    seeds = [11, 12, 13]
    batch = _pipeline_loop(
        scheduler, unet, x, generator=[torch.Generator().manual_seed(s) for s in seeds]
    )
    for i, seed in enumerate(seeds):
        scheduler.set_timesteps(5)
        alone = _pipeline_loop(
            scheduler, unet, x[i : i + 1], generator=[torch.Generator().manual_seed(seed)]
        )
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=1e-10, atol=1e-10)
    scheduler.set_timesteps(5)
    with pytest.raises(sd.ArgumentError, match="got 2 generators for a batch of 3"):
        _pipeline_loop(scheduler, unet, x, generator=[torch.Generator()] * 2)


def test_multistep_solvers_with_the_analytical_first_step_fit_a_pipeline():
    config = diffusers.DDPMScheduler().config
    for name in ("ipndm", "deis"):
        scheduler = DiffusersScheduler.from_config(
            config, solver=name, solver_options={"afs": True}
        )
        assert scheduler.solver.afs


def test_one_inference_step_is_the_tweedie_step_from_the_prior():
    unet = tiny_unet(diffusers)
    training = diffusers.DDPMScheduler(prediction_type="sample")
    scheduler = DiffusersScheduler.from_config(training.config, solver="dpmpp_2m")
    scheduler.set_timesteps(1)
    assert scheduler.grid == [1.0, 0.0]
    x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    out = _pipeline_loop(scheduler, unet, x)
    with torch.no_grad():
        expected = unet(x, scheduler.timesteps[0]).sample  # an x0 model's own prediction
    torch.testing.assert_close(out, expected)


def test_a_zero_terminal_snr_v_model_runs_as_diffusers_ddim_does():
    """SD 2.x-style: rescaled zero-terminal-SNR table, v prediction, trailing timesteps."""
    unet = tiny_unet(diffusers)
    theirs = diffusers.DDIMScheduler(
        **SD_TABLE,
        rescale_betas_zero_snr=True,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=True,
    )
    assert theirs.alphas_cumprod[-1] == 0
    x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    theirs.set_timesteps(8)
    expected = _pipeline_loop(theirs, unet, x, begin_index=False)
    ours = DiffusersScheduler.from_config(theirs.config, solver="ddim")
    ours.set_timesteps(timesteps=theirs.timesteps.tolist())
    assert ours.grid[0] == 1.0 and ours.timesteps[0] == 999
    out = _pipeline_loop(ours, unet, x)
    assert relative(out, expected) < 1e-4
    model, sde = from_diffusers(unet, theirs)  # from_diffusers takes the table too
    assert float(sde.alpha(1.0)) < 1e-3
    with torch.no_grad():
        again = sd.solve(model, sde, x, torch.tensor(ours.grid), "ddim").x
    assert relative(again, expected) < 1e-4


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_diffusers_timestep_spacings_visit_ddpms_levels(spacing):
    theirs = diffusers.DDPMScheduler(**SD_TABLE, timestep_spacing=spacing, steps_offset=1)
    theirs.set_timesteps(10)
    ours = DiffusersScheduler.from_config(theirs.config, solver="euler", spacing=spacing)
    ours.set_timesteps(10)
    assert ours.timesteps.tolist() == theirs.timesteps.float().tolist()
    assert ours.grid[-1] == 0.0


def test_exponential_spacing_is_uniform_in_log_snr_and_bad_spacings_are_named():
    config = diffusers.DDPMScheduler().config
    ours = DiffusersScheduler.from_config(config, spacing="exponential")
    ours.set_timesteps(6)
    lam = ours.sde.log_snr(torch.tensor(ours.grid[:-1], dtype=torch.float64))
    torch.testing.assert_close(lam.diff(), lam.diff()[:1].expand(5), rtol=1e-6, atol=1e-9)
    with pytest.raises(sd.ArgumentError, match=r"spacing 'karas'; choose one of .*trailing"):
        DiffusersScheduler.from_config(config, spacing="karas")


def test_a_tuned_grid_file_runs_in_the_pipeline(tmp_path):
    config = diffusers.DDPMScheduler(**SD_TABLE).config
    probe = DiffusersScheduler.from_config(config)
    times = [1.0, 0.6, 0.3, 0.1, 0.0]
    sd.TunedGrid(times, "deis", {"order": 2}, 4, repr(probe.sde)).save(tmp_path / "g.json")
    ours = DiffusersScheduler.from_config(config, solver="deis", grid=str(tmp_path / "g.json"))
    ours.set_timesteps()
    assert ours.grid == times and len(ours.timesteps) == 4
    with pytest.raises(sd.ArgumentError, match="runs its tuned grid of 4 steps"):
        ours.set_timesteps(10)
    sd.TunedGrid(times, "deis", {}, 4, "EDMSDE()").save(tmp_path / "edm.json")
    with pytest.raises(sd.ArgumentError, match="was tuned for EDMSDE"):
        DiffusersScheduler.from_config(config, grid=str(tmp_path / "edm.json"))


def test_the_ddim_pipeline_passes_its_eta_to_our_ddim():
    """DDIMPipeline calls step(..., eta=eta): our ddim runs with that eta; equal to
    sd.solve with ddim(eta) on the same grid and noise (generator per image)."""
    unet = tiny_unet(diffusers)
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DiffusersScheduler.from_config(pipe.scheduler.config, solver="ddim")

    def images(eta):
        generator = torch.Generator().manual_seed(7)
        return pipe(batch_size=2, generator=generator, num_inference_steps=6, eta=eta,
                    output_type="np").images  # fmt: skip

    deterministic, stochastic = images(0.0), images(1.0)
    assert abs(stochastic - deterministic).max() > 1e-3  # eta reached the solver
    model, sde = from_diffusers(unet, diffusers.DDIMScheduler())
    g = torch.Generator().manual_seed(7)
    x_T = torch.randn(2, 2, 8, 8, generator=g)  # what the pipeline draws first
    grid = torch.tensor(pipe.scheduler.grid)
    with torch.no_grad():
        ours = sd.solve(model, sde, x_T, grid, "ddim", eta=1.0, generator=g).x
    ours_images = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert abs(stochastic - ours_images).max() < 1e-5
    pipe.scheduler = DiffusersScheduler.from_config(pipe.scheduler.config, solver="dpmpp_2m")
    images(0.0)  # a solver without eta is eta = 0
    with pytest.raises(sd.ArgumentError, match=r"eta=0\.5, but solver 'dpmpp_2m' has no eta"):
        images(0.5)


def _dummy_loop(scheduler, steps=6, seed=0, **step_kwargs):
    """diffusers' common scheduler checks use a dummy model; a full loop with it."""
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed + 1)
    for t in scheduler.timesteps:
        out = scheduler.sde.sigma((t + 1) / 1000).float() * x  # the exact ε of N(0, I) data
        step = scheduler.step(out, t, x, generator=generator, **step_kwargs)
        x = step.prev_sample if step_kwargs.get("return_dict", True) else step[0]
    return x


@pytest.mark.parametrize("name", sd.adapters.pipeline_solvers())
def test_diffusers_common_scheduler_checks_for_every_pipeline_solver(name, tmp_path):
    """After diffusers' SchedulerCommonTest: the config round trip, step shapes and tuple
    output, a finite and reproducible full loop, and the class attributes pipelines read."""
    scheduler = DiffusersScheduler.from_config(
        diffusers.DDPMScheduler(**SD_TABLE).config, solver=name
    )
    scheduler.set_timesteps(6)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    first = scheduler.step(x, scheduler.timesteps[0], x, generator=torch.Generator())
    assert first.prev_sample.shape == x.shape and first.prev_sample.dtype == x.dtype
    assert scheduler.step_index == 1
    whole = _dummy_loop(scheduler)
    assert torch.isfinite(whole).all()
    assert torch.equal(_dummy_loop(scheduler), whole)  # reproducible from its generator
    assert torch.equal(_dummy_loop(scheduler, return_dict=False), whole)
    scheduler.save_config(tmp_path)
    loaded = DiffusersScheduler.from_pretrained(tmp_path)
    assert torch.equal(_dummy_loop(loaded), whole)
    assert scheduler.init_noise_sigma == 1.0
    assert scheduler.order == evaluations_a_step(scheduler.solver)  # evaluations a step
    assert len(scheduler.timesteps) == sd.get_solver(name).expected_nfe(scheduler.grid)
    assert len(scheduler) == 1000 and scheduler.scale_model_input(x, 5) is x
    half = _dummy_loop(scheduler).half()  # a half-precision sample keeps its dtype
    scheduler.set_timesteps(6)
    out = scheduler.step(half, scheduler.timesteps[0], half, generator=torch.Generator())
    assert out.prev_sample.dtype == torch.float16


def _flow_loop(scheduler, steps=8, mu=None):
    """A flow pipeline's loop with a dummy velocity model (σ N fed as the timestep)."""
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    scheduler.set_timesteps(steps, **({} if mu is None else {"mu": mu}))
    for t in scheduler.timesteps:
        x = scheduler.step(0.3 * x * (t / 1000) - 0.1, t, x).prev_sample
    return x


@pytest.mark.parametrize("config", [{"shift": 3.0}, {"use_dynamic_shifting": True}])
def test_flow_matching_euler_is_flow_match_euler_discrete(config):
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    ours = FlowMatchingScheduler.from_config(theirs.config, solver="euler")
    mu = 0.8 if config.get("use_dynamic_shifting") else None
    expected, out = _flow_loop(theirs, mu=mu), _flow_loop(ours, mu=mu)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    assert relative(out, expected) < 1e-6
    back = diffusers.FlowMatchEulerDiscreteScheduler.from_config(ours.config)
    keys = [k for k in theirs.config if not k.startswith("_")]
    assert {k: back.config[k] for k in keys} == {k: theirs.config[k] for k in keys}
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    t = theirs.timesteps[2:3]
    torch.testing.assert_close(ours.scale_noise(x0, t, noise), theirs.scale_noise(x0, t, noise))


@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc"])
def test_flow_matching_runs_exponential_integrators_as_sd_solve_does(name):
    """From σ = 1 (RectifiedFlow with T = 1): the scheduler's loop is sd.solve's run."""
    ours = FlowMatchingScheduler.from_config(
        diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config, solver=name
    )
    out = _flow_loop(ours)
    model = sd.FunctionModel(
        lambda x, t, cond: 0.3 * x * sd.append_dims(t, x.ndim) - 0.1, prediction="velocity"
    )
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    expected = sd.solve(model, ours.sde, x, torch.tensor(ours.grid), name).x
    assert ours.grid[0] == 1.0 and ours.grid[-1] == 0.0
    assert torch.isfinite(out).all() and relative(out, expected) < 1e-5


def test_a_config_of_the_other_family_names_the_right_scheduler():
    flow = diffusers.FlowMatchEulerDiscreteScheduler().config
    with pytest.raises(sd.ArgumentError, match="flow-matching model: build FlowMatchingScheduler"):
        DiffusersScheduler.from_config(flow)
    ddpm = diffusers.DDPMScheduler().config
    with pytest.raises(sd.ArgumentError, match="DDPM-family model: build DiffusersScheduler"):
        FlowMatchingScheduler.from_config(ddpm)


@pytest.mark.parametrize("name", ["heun", "dpm_2", "dpmpp_2s"])
def test_solvers_of_two_evaluations_a_step_run_as_sd_solve_does(name):
    """The scheduler asks the pipeline for each evaluation in turn (order 2, the stage
    times in its timesteps); the result is sd.solve's on the same grid."""
    config = diffusers.DDPMScheduler(**SD_TABLE, prediction_type="sample").config
    scheduler = DiffusersScheduler.from_config(config, solver=name)
    assert scheduler.order == 2

    def denoiser(x, t):  # an x0 model: the exact denoiser of N(0, I) data, as seen by level
        alpha = scheduler.sde.alpha((t + 1) / 1000).float()
        return x * (sd.append_dims(alpha, x.ndim) if alpha.ndim else alpha)

    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    scheduler.set_timesteps(6)
    out = x
    for t in scheduler.timesteps:
        out = scheduler.step(denoiser(out, t), t, out).prev_sample
    model = sd.FunctionModel(
        lambda x, t, cond: denoiser(x, sd.adapters.model_timestep(t, scheduler.sde)),
        prediction="x0",
    )
    expected = sd.solve(model, scheduler.sde, x, torch.tensor(scheduler.grid), name).x
    assert relative(out, expected) < 1e-6
    scheduler.set_timesteps(6)  # a new run: the old one's thread is let go
    scheduler.step(denoiser(x, scheduler.timesteps[0]), scheduler.timesteps[0], x)
    scheduler.set_timesteps(4)
    assert len(scheduler.timesteps) == 7  # 3 steps of 2 evaluations and the final one


def test_heun_in_flow_matching_is_flow_match_heun_discrete():
    theirs = diffusers.FlowMatchHeunDiscreteScheduler(shift=3.0)
    ours = FlowMatchingScheduler.from_config(
        diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config, solver="heun"
    )
    expected, out = _flow_loop(theirs, steps=6), _flow_loop(ours, steps=6)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    assert relative(out, expected) < 1e-5


def test_the_sigma_options_of_the_replaced_scheduler_map_onto_our_spacings():
    exponential = diffusers.DPMSolverMultistepScheduler(use_exponential_sigmas=True).config
    assert DiffusersScheduler.from_config(exponential).config.spacing == "exponential"
    karras = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True).config
    assert DiffusersScheduler.from_config(karras, spacing="trailing").config.spacing == "trailing"
    assert DiffusersScheduler.from_config(karras).config.spacing == "karras"
    beta = diffusers.EulerDiscreteScheduler(use_beta_sigmas=True)
    ours = DiffusersScheduler.from_config(beta.config, solver="ddim")
    assert ours.config.spacing == "beta"
    ours.set_timesteps(6)
    beta.set_timesteps(6)
    sigmas = (1 / ours.sde.alpha(torch.tensor(ours.grid)) ** 2 - 1).sqrt()
    torch.testing.assert_close(sigmas.float(), beta.sigmas, rtol=1e-4, atol=1e-6)
    with pytest.raises(sd.ArgumentError, match="mu is the dynamic shift of flow matching"):
        ours.set_timesteps(6, mu=0.5)


def test_align_your_steps_gives_the_published_stable_diffusion_timesteps():
    """NVIDIA's AYS page lists SD 1.5's 10-step timesteps; our `ays` schedule on SD 1.5's
    table (scaled-linear β 0.00085-0.012) lands on them."""
    sched = DiffusersScheduler(
        spacing="ays", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    sched.set_timesteps(10)
    published = [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]
    assert sched.timesteps.round().int().tolist() == published
