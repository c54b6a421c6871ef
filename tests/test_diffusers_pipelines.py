"""Stable-Diffusion-style pipelines run our scheduler and give what diffusers' own scheduler
of the same method gives, on the same latents with the same timesteps fed to the network.

Tiny randomly initialised (seeded) components, no download, no tokenizer (the prompts
arrive as embeddings). Needs diffusers and transformers (``pip install -e ".[peers]"``).
"""

import pytest
import torch

import sde_diffusion as sd

pytest.importorskip("transformers", reason="the peers extra is not installed")
diffusers = pytest.importorskip("diffusers")
from sde_diffusion.adapters import DiffusersScheduler, FlowMatchingScheduler  # noqa: E402

SD_TABLE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
# ours beside diffusers' scheduler of the same update (EulerDiscreteScheduler is Euler in
# σ on x/α, which is our ddim)
SAME_METHOD = [
    ("DPMSolverMultistepScheduler", "dpmpp_2m"),
    ("EulerDiscreteScheduler", "ddim"),
    ("UniPCMultistepScheduler", "unipc"),
]


def tiny_vae():
    """A seeded two-block KL autoencoder: 16x16 images, 8x8x4 latents."""
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=16,
    ).eval()


def tiny_sd3_transformer():
    """A seeded one-layer SD3 transformer on 8x8x4 latents."""
    torch.manual_seed(0)
    return diffusers.SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_projection_dim=16,
        joint_attention_dim=16,
        pooled_projection_dim=8,
        out_channels=4,
    ).eval()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def parts():
    """A tiny latent UNet with cross-attention, a tiny VAE, prompt embeddings, an image."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=2,
        attention_head_dim=2,
    ).eval()
    vae = tiny_vae()
    g = torch.Generator().manual_seed(0)
    prompts = {
        "prompt_embeds": torch.randn(2, 5, 16, generator=g),
        "negative_prompt_embeds": torch.randn(2, 5, 16, generator=g),
    }
    image = torch.rand(1, 3, 16, 16, generator=g).repeat(2, 1, 1, 1)  # in [0, 1]
    return unet, vae, prompts, image


def pipeline(kind, parts, scheduler_name):
    unet, vae, *_ = parts
    scheduler = getattr(diffusers, scheduler_name)(**SD_TABLE, steps_offset=1)
    pipe = getattr(diffusers, kind)(
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latents_both_ways(pipe, ours_name, steps=10, **inputs):
    """The pipeline's latents with its own scheduler, then with ours swapped in by the
    diffusers idiom and fed the same timesteps."""
    probe = type(pipe.scheduler).from_config(pipe.scheduler.config)
    probe.set_timesteps(steps)
    timesteps = probe.timesteps.tolist()

    def run(**schedule):
        generator = torch.Generator().manual_seed(1)
        return pipe(
            **inputs, guidance_scale=3.0, generator=generator, output_type="latent", **schedule
        ).images

    theirs = run(num_inference_steps=steps)
    pipe.scheduler = DiffusersScheduler.from_config(pipe.scheduler.config, solver=ours_name)
    ours = run(timesteps=timesteps)
    return theirs, ours


@pytest.mark.parametrize(("theirs_name", "ours_name"), [SAME_METHOD[0], SAME_METHOD[2]])
def test_text_to_image_with_guidance_equals_diffusers_own_scheduler(parts, theirs_name, ours_name):
    """(Not EulerDiscreteScheduler here: it starts from noise of std σ_max in its VE units,
    σ_max/√(1 + σ_max²) = 0.998 of the prior's in ours, so the starts differ by 0.2 %;
    from an image, img2img and inpainting below, it matches.)"""
    pipe = pipeline("StableDiffusionPipeline", parts, theirs_name)
    theirs, ours = latents_both_ways(pipe, ours_name, **parts[2], height=16, width=16)
    assert relative(ours, theirs) < 1e-4


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
@pytest.mark.parametrize(("theirs_name", "ours_name"), SAME_METHOD)
def test_img2img_equals_diffusers_own_scheduler(parts, theirs_name, ours_name, strength):
    """img2img starts mid-schedule (set_begin_index, add_noise): the same latents."""
    pipe = pipeline("StableDiffusionImg2ImgPipeline", parts, theirs_name)
    theirs, ours = latents_both_ways(pipe, ours_name, **parts[2], image=parts[3], strength=strength)
    assert relative(ours, theirs) < 1e-4


@pytest.mark.parametrize(("theirs_name", "ours_name"), SAME_METHOD[:2])
def test_inpainting_equals_diffusers_own_scheduler(parts, theirs_name, ours_name):
    """A 4-channel UNet inpaints by blending the noised image back in at each step
    (add_noise at the next timestep): the same latents."""
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1.0
    pipe = pipeline("StableDiffusionInpaintPipeline", parts, theirs_name)
    theirs, ours = latents_both_ways(
        pipe, ours_name, **parts[2], image=parts[3], mask_image=mask, strength=0.75,
        height=16, width=16,
    )  # fmt: skip
    assert relative(ours, theirs) < 1e-4


def test_a_flow_matching_pipeline_runs_our_solvers():
    """SD3 with a tiny transformer and guidance: our euler and heun equal FlowMatchEuler-
    and FlowMatchHeunDiscreteScheduler; dpmpp_2m and unipc run from σ = 1 to a finite
    result."""
    torch.manual_seed(0)
    transformer = tiny_sd3_transformer()
    vae = tiny_vae()
    encoders = {
        f"{kind}{n}": None for kind in ("text_encoder", "tokenizer") for n in ("", "_2", "_3")
    }
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        **encoders,
    )
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    inputs = {
        "prompt_embeds": torch.randn(2, 5, 16, generator=g),
        "negative_prompt_embeds": torch.randn(2, 5, 16, generator=g),
        "pooled_prompt_embeds": torch.randn(2, 8, generator=g),
        "negative_pooled_prompt_embeds": torch.randn(2, 8, generator=g),
    }

    def latents():
        generator = torch.Generator().manual_seed(1)
        return pipe(
            **inputs, height=16, width=16, guidance_scale=3.0, num_inference_steps=6,
            generator=generator, output_type="latent",
        ).images  # fmt: skip

    theirs = latents()
    config = pipe.scheduler.config
    pipe.scheduler = FlowMatchingScheduler.from_config(config, solver="euler")
    assert relative(latents(), theirs) < 1e-4
    pipe.scheduler = diffusers.FlowMatchHeunDiscreteScheduler.from_config(config)
    theirs_heun = latents()
    pipe.scheduler = FlowMatchingScheduler.from_config(config, solver="heun")
    assert relative(latents(), theirs_heun) < 1e-4  # two evaluations a step, one at a time
    for name in ("dpmpp_2m", "unipc"):
        pipe.scheduler = FlowMatchingScheduler.from_config(pipe.scheduler.config, solver=name)
        out = latents()
        assert torch.isfinite(out).all() and 0 < relative(out, theirs) < 0.5


def test_from_diffusers_takes_a_flow_transformer_and_its_scheduler():
    """An SD3 transformer and FlowMatchEulerDiscreteScheduler: RectifiedFlow(T=1), a
    velocity model; our euler on the scheduler's sigmas is its own loop."""
    torch.manual_seed(0)
    transformer = tiny_sd3_transformer()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    g = torch.Generator().manual_seed(0)
    cond = {
        "encoder_hidden_states": torch.randn(2, 5, 16, generator=g),
        "pooled_projections": torch.randn(2, 8, generator=g),
    }
    x = torch.randn(2, 4, 8, 8, generator=g)
    scheduler.set_timesteps(6)
    expected = x
    with torch.no_grad():
        for t in scheduler.timesteps:
            v = transformer(hidden_states=expected, timestep=t.expand(2), **cond).sample
            expected = scheduler.step(v, t, expected).prev_sample
    model, sde = sd.adapters.from_diffusers(transformer, scheduler)
    assert isinstance(sde, sd.RectifiedFlow) and sde.T == 1.0 and model.prediction == "velocity"
    with torch.no_grad():
        ours = sd.solve(model, sde, x, sd.adapters.scheduler_grid(scheduler), "euler", cond=cond)
    assert relative(ours.x, expected) < 1e-5


def tiny_text_encoder():
    """A seeded one-layer CLIP text encoder of width 16 (the UNet's cross-attention width)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=8,
    )  # fmt: skip
    return transformers.CLIPTextModel(config).eval()


def test_a_tiny_stable_diffusion_pipeline_runs_our_solvers_both_ways(parts):
    """StableDiffusionPipeline (UNet2DConditionModel, AutoencoderKL, a CLIP text encoder;
    the prompts' token ids encoded here, so no tokenizer files) with guidance 3: diffusers'
    DPMSolverMultistepScheduler, our dpmpp_2m as its scheduler, and our dpmpp_2m through
    from_diffusers + sd.sample on a latent model whose autoencoder is the pipeline's VAE
    give the same images from the same starting latents."""
    unet, vae, _, _ = parts
    encoder = tiny_text_encoder()
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        prompt = encoder(ids)[0]
        negative = encoder(torch.zeros_like(ids))[0]
    scheduler = diffusers.DPMSolverMultistepScheduler(**SD_TABLE, steps_offset=1)
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=encoder, tokenizer=None, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    model, sde = sd.adapters.from_diffusers(unet, scheduler)
    x_T = sde.prior_sample((2, 4, 8, 8), generator=torch.Generator().manual_seed(5))

    def images(**options):
        return pipe(
            prompt_embeds=prompt, negative_prompt_embeds=negative, latents=x_T.clone(),
            guidance_scale=3.0, num_inference_steps=10, output_type="pt", **options,
        ).images  # fmt: skip

    theirs = images()
    timesteps = pipe.scheduler.timesteps.tolist()
    pipe.scheduler = DiffusersScheduler.from_config(scheduler.config, solver="dpmpp_2m")
    assert relative(images(timesteps=timesteps), theirs) < 1e-4

    latent = sd.LatentModel(model, sd.adapters.DiffusersAutoencoder(vae), (3, 16, 16), (4, 8, 8))
    guided = sd.ClassifierFreeGuidance(latent, 3.0, null=lambda cond: negative)
    probe = diffusers.DPMSolverMultistepScheduler.from_config(scheduler.config)
    probe.set_timesteps(10)
    grid = sd.adapters.scheduler_grid(probe, sde)
    with torch.no_grad():
        res = sd.sample(guided, sde, (2, 4, 8, 8), "dpmpp_2m", grid=grid, cond=prompt, seed=5,
                        return_trajectory=True)  # fmt: skip
    assert torch.equal(res.trajectory[0], x_T)  # sd.sample's own start: the pipeline's latents
    ours = (res.x / 2 + 0.5).clamp(0, 1)  # the pipeline's postprocessing of decoded images
    assert ours.shape == theirs.shape == (2, 3, 16, 16)
    assert relative(ours, theirs) < 1e-4


def test_the_vae_adapter_encodes_and_decodes_in_the_unets_units():
    vae = tiny_vae()
    adapter = sd.adapters.DiffusersAutoencoder(vae)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z = adapter.encode(x)
        raw = vae.encode(x).latent_dist.mean
        torch.testing.assert_close(z, raw * vae.config.scaling_factor)
        torch.testing.assert_close(adapter.decode(z), vae.decode(raw).sample)
    with pytest.raises(TypeError, match="AutoencoderKL"):
        sd.adapters.DiffusersAutoencoder(torch.nn.Linear(2, 2))
