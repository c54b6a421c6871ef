"""The sampler and scheduler names of ComfyUI and diffusers, and what each is here.

``COMFYUI_SAMPLERS`` and ``COMFYUI_SCHEDULERS`` are ComfyUI's ``SAMPLER_NAMES`` and
``SCHEDULER_NAMES`` (comfy/samplers.py): every one resolves with ``get_solver`` and
``timesteps`` (a test).  ``DIFFUSERS_SCHEDULERS`` maps our solvers to the diffusers scheduler
class that runs the same method (``benchmarks/peers.py`` compares most of them at equal NFE).
"""

from __future__ import annotations

from .registry import solver_class

__all__ = ["COMFYUI_SAMPLERS", "COMFYUI_SCHEDULERS", "DIFFUSERS_SCHEDULERS", "peer_names"]

COMFYUI_SAMPLERS = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
    "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde",
    "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
    "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp",
    "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation",
    "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece",
    "ddim", "uni_pc", "uni_pc_bh2",
)  # fmt: skip

COMFYUI_SCHEDULERS = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
)  # fmt: skip

DIFFUSERS_SCHEDULERS = {
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "dpm_2": "KDPM2DiscreteScheduler",
    "dpm_2_ancestral": "KDPM2AncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_3m": "DPMSolverMultistepScheduler (solver_order=3)",
    "dpmpp_2m_sde": "DPMSolverMultistepScheduler (sde-dpmsolver++)",
    "dpmpp_3m_sde": "DPMSolverMultistepScheduler (sde-dpmsolver++, order 3)",
    "dpmpp_2s": "DPMSolverSinglestepScheduler (solver_order=2)",
    "dpmpp_sde": "DPMSolverSDEScheduler",
    "ddim": "DDIMScheduler",
    "ancestral": "DDPMScheduler",
    "deis": "DEISMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "sa_solver": "SASolverScheduler",
    "lcm": "LCMScheduler",
}


def peer_names(name: str) -> tuple[list[str], str | None]:
    """``(ComfyUI names, diffusers scheduler)`` that run the registered solver ``name``."""
    canonical = solver_class(name).info.name
    comfy = [n for n in COMFYUI_SAMPLERS if solver_class(n).info.name == canonical]
    return comfy, DIFFUSERS_SCHEDULERS.get(canonical)
