"""Training a score model by denoising score matching.

``Trainer`` runs AdamW with linear warm-up and gradient clipping, keeps an EMA of
the weights through ``torch.optim.swa_utils``, optionally compiles the network and
autocasts it to bf16 or fp16 (loss-scaled; :mod:`~sde_diffusion.acceleration`), shows
a rich progress bar, and writes checkpoints (model, EMA, optimiser, RNG states)
that resume bit for bit on CPU.  Ctrl-C (``KeyboardInterrupt``) and a failed peer
rank save a checkpoint before the error goes on; ``stop_requested`` (set by a
SIGTERM handler) ends the run after the current step with a checkpoint.

Under ``torchrun`` it trains data-parallel (DDP): ``batch_size`` is the global
batch.  Every rank draws the same global batch (indices, label dropout, times and
noise) from one generator seeded alike on all ranks and keeps its own slice of
``batch_size / world`` rows, so ranks see disjoint data and the run follows the
single-process run with the same seed (to the rounding of the gradient all-reduce),
whatever the world size; a checkpoint resumes on any number of processes.  Rank 0
alone writes, and every rank waits at a barrier until the file is complete.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..acceleration import accelerate, check_precision
from ..distributed import barrier, init_distributed, rank_and_world, sum_over_ranks
from ..errors import ArgumentError
from ..noise import seeded_generator
from ..parametrization import ScoreModel
from ..sampling import sample
from .autoencoding import AutoencoderModel
from .data import Dataset
from .log import QualityMetric, TrainingLog
from .losses import DenoisingScoreMatching, immiscible_noise
from .objectives import DenoisingObjective, Objective
from .posthoc_ema import (
    DEFAULT_SIGMA_RELS,
    PowerEMA,
    gamma_from_sigma_rel,
    save_snapshot,
    snapshot_dir,
)
from .state import (
    export_lora,
    export_model,
    load_score_model,
    load_training_state,
    model_config,
    save_training_state,
    training_tensors,
)

__all__ = ["NonFiniteLossError", "TrainConfig", "Trainer", "init_distributed", "load_score_model"]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss or gradient; the weights were not updated."""


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    posthoc_ema: bool = False  # also keep power-function EMAs and write snapshots of them
    posthoc_sigma_rels: tuple[float, ...] = DEFAULT_SIGMA_RELS
    snapshot_every: int = 250
    loss_weighting: str = "edm"
    min_snr_gamma: float = 5.0  # the min-snr weighting's clamp of the signal-to-noise ratio
    immiscible: bool = False  # pair each batch's noise with its data by linear assignment
    lr_schedule: str = "constant"  # or "edm2": lr / sqrt(max(step / lr_decay_steps, 1))
    lr_decay_steps: int = 1000
    precision: str = "fp32"  # the network's autocast: fp32, bf16, or fp16 with loss scaling
    compile: bool | str = False  # torch.compile the network (True or a mode name)
    seed: int = 0
    checkpoint_every: int = 500
    keep_every: int = 0  # N > 0: also export the EMA weights every N steps as NAME.stepN
    log_every: int = 10  # a row of NAME.metrics.jsonl every N steps
    eval_every: int = 0  # N > 0: the quality metric of the EMA model every N steps
    sample_every: int = 0  # 0: no evaluation samples
    sample_count: int = 64
    sample_solver: str = "heun"
    sample_steps: int = 18
    device: str = "cpu"
    cond_drop_prob: float = 0.1  # conditional runs: share of labels replaced by the null label

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "checkpoint_every", "sample_count", "sample_steps")
        positive += ("snapshot_every", "log_every", "lr_decay_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ArgumentError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_precision(self.precision)
        if self.keep_every < 0 or self.eval_every < 0:
            raise ArgumentError(
                f"keep_every and eval_every must be >= 0, got {self.keep_every}, {self.eval_every}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ArgumentError(
                f"unknown lr_schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}"
            )
        self.posthoc_sigma_rels = tuple(float(s) for s in self.posthoc_sigma_rels)
        for sigma_rel in self.posthoc_sigma_rels:
            gamma_from_sigma_rel(sigma_rel)  # an ArgumentError outside (0, 0.2887)
        if not 0 <= self.cond_drop_prob < 1:
            raise ArgumentError(f"cond_drop_prob must lie in [0, 1), got {self.cond_drop_prob}")
        if not 0 < self.lr < math.inf or self.warmup < 0 or not 0 <= self.ema_decay < 1:
            raise ArgumentError(
                f"need lr > 0, warmup >= 0 and 0 <= ema_decay < 1, got lr={self.lr}, "
                f"warmup={self.warmup}, ema_decay={self.ema_decay}"
            )


LR_SCHEDULES = ("constant", "edm2")


def kept_path(checkpoint: str | Path, step: int) -> Path:
    """Where ``keep_every`` exports the EMA weights of ``step``: ``NAME.step001000.safetensors``
    beside the checkpoint (an early model of the run: autoguidance's guide)."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.step{step:06d}{path.suffix or '.safetensors'}")


def _adamw(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; a compiled run also takes the fused kernel where the device has one (the same
    update in one pass over the parameters)."""
    settings = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.compile:
        try:
            return torch.optim.AdamW(params, fused=True, **settings)
        except (RuntimeError, ValueError):  # no fused AdamW for this device or torch
            pass
    return torch.optim.AdamW(params, **settings)


class Trainer:
    """Trains ``model`` on ``data`` (a ``Dataset``) under ``config``: denoising score
    matching, or another ``objective`` (:mod:`.objectives`: a student's distillation or
    consistency loss; :mod:`.autoencoding`: an :class:`AutoencoderModel`'s reconstruction
    and KL).  Latent data encoded with their posterior spread (``data.spread``) are drawn
    afresh, ``x + spread * noise``, every step."""

    def __init__(
        self,
        model: ScoreModel | AutoencoderModel,
        data: Dataset,
        config: TrainConfig,
        metric: QualityMetric | None = None,
        objective: Objective | None = None,
    ):
        self.model, self.data, self.config = model, data, config
        # what eval_every logs: sde_diffusion.evaluation.quality.quality_metric(data)
        self.metric = metric
        if config.eval_every and metric is None:
            raise ArgumentError(
                "eval_every needs a metric: pass metric=quality_metric(data) "
                "(sde_diffusion.evaluation.quality)"
            )
        self.device = torch.device(config.device)
        self.model.to(self.device)
        self.rank, self.world = rank_and_world()
        if config.batch_size % self.world:
            raise ArgumentError(
                f"the global batch size {config.batch_size} does not split evenly over "
                f"{self.world} processes; use a multiple of {self.world}"
            )
        if objective is None:
            objective = DenoisingObjective(
                DenoisingScoreMatching(
                    model.sde, config.loss_weighting, min_snr_gamma=config.min_snr_gamma
                )
            )
        self.objective = objective
        if config.immiscible and not isinstance(self.objective, DenoisingObjective):
            raise ArgumentError("immiscible noise pairs denoising score matching's noise only")
        self.net = self.model.net  # the bare network: saved, averaged, exported
        if self.world > 1:  # every rank starts from rank 0's weights (EMA included)
            for tensor in self.net.state_dict().values():
                dist.broadcast(tensor, 0)
        self.ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True
        )
        # post-hoc EMA: power-function averages of the parameters (snapshots every K steps)
        self.phema = (
            PowerEMA(self.net.parameters(), config.posthoc_sigma_rels)
            if config.posthoc_ema
            else None
        )
        if self.world > 1:  # the loss runs through the wrapper, which all-reduces gradients
            self.model.net = torch.nn.parallel.DistributedDataParallel(self.net)
        # what the loss runs: the same parameters, compiled and/or autocast if asked
        self.forward_model = accelerate(self.model, config.compile, config.precision)
        # what the optimiser moves (a LoRA run: the adapter's weights only)
        self.trained = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = _adamw(self.trained, config)
        # fp16 gradients underflow without a loss scale; it skips steps that overflow
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.step = 0
        self.stop_requested = False  # set from a signal handler: save and stop after this step
        # one stream, the same on every rank: the global batch is drawn alike everywhere
        self.generator = seeded_generator(config.seed * 1000, self.device)
        self.history: list[dict[str, float]] = []
        self.grad_norm = float("nan")  # the last step's (before clipping)
        # the data sets here are small: keep them on the device, index there (no host sync)
        self._x = data.x.to(self.device)
        self._labels = data.labels.to(self.device) if data.labels is not None else None
        self._spread = data.spread.to(self.device) if data.spread is not None else None

    # -- the loop ---------------------------------------------------------------

    def learning_rate(self, step: int) -> float:
        """Linear warm-up over ``warmup`` steps; with ``lr_schedule="edm2"`` then the
        inverse square-root decay ``lr / sqrt(max(step / lr_decay_steps, 1))`` (Karras et
        al. 2024, eq. 7)."""
        config = self.config
        rate = config.lr * min(1.0, (step + 1) / max(1, config.warmup))
        if config.lr_schedule == "edm2":
            rate /= math.sqrt(max(step / config.lr_decay_steps, 1.0))
        return rate

    def train_step(self) -> float:
        """One optimiser step on the global batch; returns its mean loss.

        The loss and the gradient norm are read before the step: if either is not
        finite, :class:`NonFiniteLossError` is raised and the weights stay as they were
        (in fp16 an overflowing gradient only skips the step and lowers the loss scale).
        """
        size, gen, device = self.config.batch_size, self.generator, self.device
        idx = torch.randint(len(self._x), (size,), generator=gen, device=device)
        cond = self._condition(idx)
        draws = self.objective.draw(size, gen, self.step, self._x)
        if self.config.immiscible:  # the whole global batch, alike on every rank
            draws["eps"] = immiscible_noise(self._x[idx], draws["eps"])
        mine = slice(self.rank * size // self.world, (self.rank + 1) * size // self.world)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        x0, cond = self._x[idx[mine]], None if cond is None else cond[mine]
        if self._spread is not None:  # latents: a fresh draw of each posterior, z ~ q(z | x)
            shape = (size, *self._x.shape[1:])  # the global batch's, alike on every rank
            posterior = torch.randn(shape, generator=gen, device=device, dtype=self._x.dtype)
            x0 = x0 + self._spread[idx[mine]] * posterior[mine]
        draws = {k: v[mine] for k, v in draws.items()}
        loss = self.objective.loss(self.forward_model, x0, draws, cond).mean()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # under DDP the gradients are averaged over ranks
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.trained, self.config.grad_clip)
        value, norm = torch.stack([loss.detach().float(), norm.float()]).tolist()  # one read
        if self.world > 1:
            value = sum_over_ranks([value])[0] / self.world
        # in fp16 a non-finite gradient norm is an overflow: the scaler skips that step
        if not math.isfinite(value) or not (math.isfinite(norm) or self.scaler.is_enabled()):
            raise NonFiniteLossError(self._non_finite_message(value, norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update_parameters(self.model)
        self.objective.after_step(self.net)
        if self.phema is not None:
            self.phema.update()
        self.step += 1
        self.grad_norm = norm
        return value

    def _non_finite_message(self, loss: float, norm: float) -> str:
        what = (
            f"the loss became {loss}"
            if not math.isfinite(loss)
            else f"the gradient norm became {norm}"
        )
        scale = float(self._x.abs().max())
        return (
            f"{what} at step {self.step + 1}, before the weights were updated; likely "
            f"causes: a learning rate too high (now {self.learning_rate(self.step):.3g}) or "
            f"data far from unit scale (max |x| = {scale:.3g})"
        )

    def _condition(self, idx: Tensor) -> Tensor | None:
        """The batch's labels, each replaced by the null label with ``cond_drop_prob``.

        Dropping teaches the null label the unconditional score, so one network serves
        both terms of classifier-free guidance.
        """
        if not self._conditional:
            return None
        labels = self._labels[idx]
        drop = torch.rand(labels.shape, generator=self.generator, device=self.device)
        null = self.net.config["num_classes"]
        return torch.where(drop < self.config.cond_drop_prob, null, labels)

    @property
    def _conditional(self) -> bool:
        return self.data.labels is not None and bool(
            getattr(self.net, "config", {}).get("num_classes")
        )

    @torch.no_grad()
    def evaluation_samples(self) -> Tensor:
        """``sample_count`` samples of the EMA model (seeded, so runs are comparable)."""
        shape = (self.config.sample_count, *self.data.x.shape[1:])
        res = sample(
            self.ema.module,
            self.model.sde,
            shape,
            self.config.sample_solver,
            self.config.sample_steps,
            seed=self.config.seed,
            device=self.device,
        )
        return res.x

    def train(
        self,
        steps: int | None = None,
        checkpoint: str | Path | None = None,
        progress: bool = True,
        on_samples: Callable[[int, Tensor], None] | None = None,
        tensorboard: str | Path | None = None,
    ) -> list[dict[str, float]]:
        """Run until ``steps`` (default ``config.steps``) total steps; returns the loss log.

        With a ``checkpoint`` path, rank 0 also writes the run's log beside it
        (:mod:`.log`: ``NAME.metrics.jsonl``, ``NAME.curves.png``, and TensorBoard scalars
        in ``tensorboard``) and, with ``posthoc_ema``, the snapshots in ``NAME.phema/``.
        Every ``config.sample_every`` steps, ``on_samples(step, samples)`` receives
        :meth:`evaluation_samples` (rank 0 only).
        """
        target = self.config.steps if steps is None else steps
        writes = checkpoint is not None and self.rank == 0
        log = TrainingLog(checkpoint, self.step, tensorboard) if writes else None
        if writes and self.phema is not None:
            self._drop_snapshots_after(checkpoint)
        try:
            self._loop(target, checkpoint, progress, on_samples, log)
        except BaseException:
            if log is not None:  # the error is the message: no second one about the log
                log.failed = True
            raise
        finally:
            if log is not None:
                log.close()
        return self.history

    def _loop(self, target, checkpoint, progress, on_samples, log) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        config = self.config
        show = progress and self.rank == 0
        columns = (
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[rate]:.1f} it/s"),
            TimeRemainingColumn(),
        )
        metric = self.metric if log is not None and config.eval_every else None
        start, first, paused = time.perf_counter(), self.step, 0.0  # paused: evaluation time
        window = {"loss": 0.0, "grad_norm": 0.0, "steps": 0, "since": start}
        try:
            with Progress(*columns, disable=not show, transient=False) as bar:
                task = bar.add_task(
                    "train", total=target, completed=self.step, loss=float("nan"), rate=0.0
                )
                while self.step < target and not self.stop_requested:
                    loss = self.train_step()
                    self.history.append({"step": self.step, "loss": loss})
                    now = time.perf_counter()
                    rate = (self.step - first) / (now - start)
                    bar.update(task, completed=self.step, loss=loss, rate=rate)
                    window["loss"] += loss
                    window["grad_norm"] += self.grad_norm
                    window["steps"] += 1
                    if log is not None and self.step % config.log_every == 0:
                        count, seconds = window["steps"], now - window["since"]
                        log.write(
                            {
                                "step": self.step,
                                "time": now - start - paused,
                                "loss": window["loss"] / count,
                                "grad_norm": window["grad_norm"] / count,
                                "lr": self.learning_rate(self.step - 1),
                                "samples_per_s": count * config.batch_size / seconds,
                            }
                        )
                        window = {"loss": 0.0, "grad_norm": 0.0, "steps": 0}
                    if metric is not None and self.step % config.eval_every == 0:
                        began = time.perf_counter()
                        value = metric.evaluate(self.ema.module)
                        log.write({"step": self.step, "time": began - start - paused,
                                   metric.name: value})  # fmt: skip
                        paused += time.perf_counter() - began
                    if checkpoint and self.step % config.checkpoint_every == 0:
                        self.save(checkpoint)
                        if log is not None:
                            log.flush()
                        barrier()  # no rank reads a checkpoint that is half written
                    keep = config.keep_every
                    if checkpoint and keep and self.step % keep == 0:
                        self.export(kept_path(checkpoint, self.step))
                    every = config.snapshot_every
                    if self.phema is not None and self.step % every == 0 and checkpoint:
                        self._snapshot(checkpoint)
                    every = config.sample_every
                    if on_samples and every and self.step % every == 0 and self.rank == 0:
                        on_samples(self.step, self.evaluation_samples())
                    window.setdefault("since", time.perf_counter())
        except (KeyboardInterrupt, RuntimeError, NonFiniteLossError):
            # Ctrl-C, a failed peer rank, a non-finite loss (the weights are not updated)
            if checkpoint:
                self.save(checkpoint)
            raise
        if checkpoint:
            self.save(checkpoint)
            if not self.stop_requested:  # ranks may stop a step apart: no collective then
                barrier()

    def _snapshot(self, checkpoint: str | Path) -> None:
        if self.rank == 0:
            names = [name for name, _ in self.net.named_parameters()]
            save_snapshot(checkpoint, self.phema, names, self.step)

    def _drop_snapshots_after(self, checkpoint: str | Path) -> None:
        """A resumed run rewrites the snapshots past its step (a crashed run's, or an
        earlier run's at the same path when starting afresh)."""
        for path in snapshot_dir(checkpoint).glob("step*.safetensors"):
            if path.stem[4:].isdigit() and int(path.stem[4:]) > self.step:
                path.unlink()

    # -- checkpoints (the layout lives in training_state) ------------------------

    def model_config(self) -> dict[str, Any]:
        """The metadata a checkpoint of this run holds."""
        return model_config(self)

    def save(self, path: str | Path) -> Path | None:
        """Write model, EMA, optimiser and RNG states (rank 0 only).

        Non-finite weights are never written: :class:`NonFiniteLossError`, and the file
        already at ``path`` stays as it was.
        """
        if self.rank != 0:
            return None
        tensors = training_tensors(self)
        finite = [torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()]
        if not bool(torch.stack(finite).all()):  # one host read
            raise NonFiniteLossError(
                f"the weights at step {self.step} are not finite; they were not written and "
                f"{path} keeps its last finite state"
            )
        return save_training_state(self, path, tensors)

    def export(self, path: str | Path) -> Path | None:
        """Write the EMA weights and the model config only (a small file to ship)."""
        return export_model(self, path) if self.rank == 0 else None

    def export_lora(self, path: str | Path) -> Path | None:
        """A LoRA run: write the adapter (the EMA of its low-rank weights, kilobytes)."""
        return export_lora(self, path) if self.rank == 0 else None

    def resume(self, path: str | Path) -> None:
        """Restore everything :meth:`save` wrote; training continues exactly."""
        load_training_state(self, path)
