"""A flow-matching image editor as an RL policy: what every diffusers editing pipeline shares.

Subclasses wrap one pipeline (flux_kontext.py, qwen_image_edit.py, qwen_image_edit_plus.py, flux2.py) and supply
four things: `encode` (text and reference images, once per prompt), `predict_velocity` (one transformer call on
packed latents), `decode`, and the modules to freeze (and, where their pipeline differs, the noise's shape, its
packing and the schedule). How many references an editor takes and which one sets the edit's aspect ratio are
its registry entry's (registry.py). Everything else is here: the pipeline's shifted sigma schedule, the
denoising loop unrolled with the Euler step swapped for a step kernel from `policies.sde` that also returns the
transition's log-prob, the peft LoRA, the reference (adapter off), the edit's layout (rlkit.core.layout), and
LoRA saving in the diffusers format. Rollout and training call
the same `_transition`, so recomputed log-probs match the recorded ones.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux_kontext import calculate_shift
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from rlkit.core.devices import DTYPES
from rlkit.core.errors import UserError
from rlkit.core.layout import EditLayout
from rlkit.policies.base import PromptBatch, Rollout
from rlkit.policies.lora import lora_targets
from rlkit.policies.registry import POLICIES
from rlkit.policies.sde import KERNELS, StepOutput, ode_step, sde_window, window_starts


def select_attention_backend(name: str) -> None:
    """Process-wide SDPA backend choice. Global flags rather than a context manager, because gradient
    checkpointing recomputes attention inside backward(), outside any context around the forward."""
    if name == "default" or not torch.cuda.is_available():
        return
    allowed = {"auto": {"flash", "efficient", "math"}}.get(name, {name})
    torch.backends.cuda.enable_flash_sdp("flash" in allowed)
    torch.backends.cuda.enable_mem_efficient_sdp("efficient" in allowed)
    torch.backends.cuda.enable_cudnn_sdp("cudnn" in allowed)
    torch.backends.cuda.enable_math_sdp("math" in allowed or name == "auto")


class FlowEditPolicy:
    pipeline_class: type  # the diffusers pipeline (from_pretrained, save_lora_weights)
    modules: tuple[str, ...] = ()  # pipeline modules to freeze and move to the device
    download_note: str = ""

    def __init__(self, pipe, cfg, sampler_cfg, device: torch.device | str = "cpu",
                 train_micro_batch: int = 0, with_adapter: bool = True):
        self.cfg, self.sampler_cfg = cfg, sampler_cfg
        # same transformer batch shape in rollout and training: the recomputed ratio is then exact in bf16
        self.rollout_batch = sampler_cfg.batch_size or train_micro_batch
        self.device = torch.device(device)
        self.dtype = DTYPES[cfg.dtype]
        if self.device.type == "cuda":
            select_attention_backend(cfg.attention_backend)
        self.pipe = pipe
        pipe.set_progress_bar_config(disable=True)
        # policy.offload: the text encoders and the VAE wait on the CPU and visit the device only to encode a
        # group's conditioning (cached for its updates) and to decode its edits, leaving the transformer the memory
        self.offloaded = tuple(n for n in self.modules if n != "transformer") if getattr(cfg, "offload", False) else ()
        for name in self.modules:
            module = getattr(pipe, name)
            module.requires_grad_(False)
            module.eval()  # no dropout: rollout and training forwards must be the same function
            module.to("cpu" if name in self.offloaded else self.device)
        self.full = getattr(cfg, "finetune", "lora") == "full"
        # Full fine-tuning in bf16/fp16 keeps fp32 master weights and runs the forward under autocast: an Adam
        # step of lr 1e-5 on a bf16 weight of size 0.02 is below half its rounding step and would be lost.
        self.mixed_precision = self.full and self.dtype != torch.float32
        weight_dtype = torch.float32 if self.mixed_precision else self.dtype
        if pipe.transformer.dtype != weight_dtype:
            pipe.transformer.to(dtype=weight_dtype)
        self.transformer = pipe.transformer
        lora = cfg.lora
        if self.full:  # every transformer weight trains; the reference is a frozen copy of the start, run
            # the same way (same dtype, same autocast), so it equals the policy exactly before the first update
            self.reference_transformer = copy.deepcopy(self.transformer)
            self.transformer.requires_grad_(True)
        elif with_adapter:  # without: the base weights alone (the sandbox pre-trains them)
            targets, unmatched = lora_targets(self.transformer, list(lora.target_modules))
            if unmatched:
                raise UserError(f"policy.lora.target_modules {unmatched} match no layer of "
                                f"{type(self.transformer).__name__}")
            try:
                self.transformer.add_adapter(LoraConfig(
                    r=lora.rank, lora_alpha=lora.alpha, target_modules=targets,
                    init_lora_weights=True if str(lora.init).lower() == "true" else lora.init,
                ))
            except ValueError as err:  # peft: none of the target modules is in this transformer
                raise UserError(f"policy.lora.target_modules {list(lora.target_modules)} match no layer of "
                                f"{type(self.transformer).__name__} ({str(err).splitlines()[0][:160]})") from None
            # LoRA weights train in fp32 even when the base is bf16 (optimizer precision); forward casts.
            for p in self.trainable_parameters():
                p.data = p.data.float()
        if cfg.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.kernel = KERNELS[sampler_cfg.kernel]
        self.resolution = cfg.resolution
        self.layout = EditLayout(cfg.resolution, multiple=pipe.vae_scale_factor * 2,
                                 reference_resolution=getattr(cfg, "reference_resolution", None),
                                 size_from=POLICIES[cfg.name].editor.size_from,
                                 square=bool(getattr(cfg, "square", False)))

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, cfg, sampler_cfg, device, train_micro_batch: int = 0) -> FlowEditPolicy:
        """Load from a local folder or the local hub cache; never downloads."""
        from diffusers.utils import logging as diffusers_logging

        bars = diffusers_logging.is_progress_bar_enabled()
        diffusers_logging.disable_progress_bar()  # "Loading pipeline components" would cut into the run's console
        try:
            pipe = cls.pipeline_class.from_pretrained(
                cfg.pretrained, dtype=DTYPES[cfg.dtype], local_files_only=True
            )
        except (OSError, ValueError) as err:
            raise UserError(
                f"policy.pretrained '{cfg.pretrained}' is not a local folder nor in the local hub cache "
                f"({type(err).__name__}). Download it first, e.g. `hf download {cfg.pretrained}`{cls.download_note}, "
                f"or set policy.pretrained to a local folder with the diffusers layout."
            ) from None
        finally:
            if bars:
                diffusers_logging.enable_progress_bar()
        return cls(pipe, cfg, sampler_cfg, device, train_micro_batch)

    @contextmanager
    def visiting(self):
        """The offloaded modules on the device for the duration (nothing moves without policy.offload)."""
        for name in self.offloaded:
            getattr(self.pipe, name).to(self.device)
        try:
            yield
        finally:
            for name in self.offloaded:
                getattr(self.pipe, name).to("cpu")
            if self.offloaded and self.device.type == "cuda":
                torch.cuda.empty_cache()

    def compute_precision(self):
        """The context of every transformer call: autocast to `policy.dtype` over fp32 master weights (full
        fine-tuning in bf16), else nothing (the weights already are in `policy.dtype`)."""
        if self.mixed_precision:
            return torch.autocast(self.device.type, dtype=self.dtype)
        return nullcontext()

    # ----------------------------------------------------------------- per-pipeline parts
    def encode(self, batch: PromptBatch):
        """Conditioning for the batch's P prompts (one row per prompt, shared by its group); has `.latent_hw`
        (the edit's unpacked latent size)."""
        raise NotImplementedError

    def predict_velocity(self, x: torch.Tensor, timestep: torch.Tensor, cond, prompt_index: torch.Tensor):
        """Velocity for packed target latents ``x`` [N, L, C] (fp32 out). ``timestep`` is t/1000 = sigma."""
        raise NotImplementedError

    def decode(self, packed: torch.Tensor, cond) -> torch.Tensor:
        """Packed latents -> images [N, 3, H, W] in [0, 1] on the CPU (H, W: the edit's size in ``cond``)."""
        raise NotImplementedError

    def velocity_by_reference_sizes(self, x: torch.Tensor, timestep: torch.Tensor, prompt_index: torch.Tensor,
                                    sizes: list, velocity) -> torch.Tensor:
        """``velocity(x, t, prompt_index)`` over one transformer batch per set of reference sizes (``sizes[p]``:
        prompt p's): reference tokens are concatenated per sample, and the transformer reads one set of positions
        for its whole batch. ``timestep``: one for all samples, or one each."""
        n = x.shape[0]
        t = timestep.reshape(-1).expand(n) if timestep.numel() == 1 else timestep.reshape(n)
        idx = prompt_index.cpu()
        groups: dict[tuple, list[int]] = {}
        for row, p in enumerate(idx.tolist()):
            groups.setdefault(tuple(sizes[p]), []).append(row)
        if len(groups) == 1:
            return velocity(x, t, idx)
        out = None
        for rows in groups.values():
            sel = torch.tensor(rows)
            v = velocity(x[sel], t[sel], idx[sel])
            out = v.new_empty((n, *v.shape[1:])) if out is None else out
            out[sel] = v
        return out

    def noise_shape(self, cond) -> tuple[int, ...]:
        """One sample's initial noise, as its pipeline's `prepare_latents` draws it (before packing)."""
        h, w = cond.latent_hw
        return self.transformer.config.in_channels // 4, h, w

    def pack(self, noise: torch.Tensor) -> torch.Tensor:
        """Initial noise [N, *noise_shape] -> the transformer's token layout [N, L, C] (2x2 patches)."""
        N, C, h, w = noise.shape
        return self.pipe._pack_latents(noise, N, C, h, w)

    def pixel_hw(self, cond) -> tuple[int, int]:
        h, w = cond.latent_hw
        return h * self.pipe.vae_scale_factor, w * self.pipe.vae_scale_factor

    def schedule(self, image_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's shifted sigma schedule: sigmas [T + 1] (ending at 0) and timesteps [T]."""
        n = self.sampler_cfg.num_steps
        sched = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        c = sched.config
        mu = calculate_shift(image_seq_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu, device="cpu")
        return sched.sigmas.float(), sched.timesteps.float()

    def _transition(self, x, steps: torch.Tensor, meta: dict, cond, prompt_index, *, noise=None,
                    prev_sample=None) -> StepOutput:
        """Denoising step ``steps[i]`` for each sample ``x[i]``: the one code path for rollout and training.

        Samples may sit at different steps (training draws timesteps per sample); all must be SDE steps or
        all ODE steps, since the kernel is chosen per call.
        """
        sigmas, timesteps, sde_mask = meta["sigmas"], meta["timesteps"], meta["sde_mask"]
        noisy = sde_mask[steps]
        if bool(noisy.any()) != bool(noisy.all()):
            raise ValueError("a transition batch mixes SDE and ODE steps")
        v = self.predict_velocity(x, timesteps[steps] / 1000, cond, prompt_index)
        kernel = self.kernel if bool(noisy[0]) else ode_step
        return kernel(
            x.to(self.device), v, sigmas[steps], sigmas[steps + 1], meta.get("noise_level", self.noise_level),
            sigma_max=float(sigmas[1]), noise=noise, prev_sample=prev_sample,
        )

    @property
    def noise_level(self) -> float:
        return self.sampler_cfg.noise_level

    def _noisy(self, sigmas: torch.Tensor, step: int, noise_level: float) -> bool:
        """Whether the kernel draws noise at this step. A step with none is deterministic: it has no log-prob
        to train and runs as the ODE (CPS's last step, to sigma 0, is exactly the Euler step there)."""
        if noise_level <= 0:
            return False
        probe = torch.zeros(1, 1)
        out = self.kernel(probe, probe, sigmas[step], sigmas[step + 1], noise_level, sigma_max=float(sigmas[1]))
        return bool(out.std[0] > 0)

    # ----------------------------------------------------------------- rollout
    @torch.no_grad()
    def sample(self, batch: PromptBatch, group_size: int, generator: torch.Generator,
               sde_window_start: int = 0, initial_noise: torch.Tensor | None = None,
               shard: tuple[int, int] | None = None, noise_level: float | None = None,
               keep_means: bool = False) -> Rollout:
        """G edits per prompt with their trajectories and log-probs. Noise comes from ``generator`` (CPU).

        ``shard=(rank, world)``: sample only this rank's contiguous share of the P x G samples (a group may span
        ranks), drawing the noise for the whole batch, so the ranks' rollouts together are exactly the unsharded
        rollout; group ids stay global. Only the prompts this rank samples are encoded. ``noise_level``: this
        rollout's sampler noise instead of the recipe's (evaluations; such a rollout is never trained on).
        ``keep_means``: record each transition's mean as well (`Rollout.means`, for GRPO-Guard's ratio)."""
        P, G = len(batch), group_size
        rank, world = shard or (0, 1)
        if (P * G) % world:
            raise ValueError(f"{P} prompts x {G} samples do not split over {world} processes")
        rows = slice(rank * P * G // world, (rank + 1) * P * G // world)
        global_prompt = torch.arange(P).repeat_interleave(G)[rows]
        mine = slice(int(global_prompt[0]), int(global_prompt[-1]) + 1)  # the prompts this rank touches
        with self.visiting():
            cond = self.encode(batch.select(mine))
        N = rows.stop - rows.start
        prompt_index = global_prompt - mine.start
        if initial_noise is None:
            initial_noise = torch.randn((P * G, *self.noise_shape(cond)), generator=generator, dtype=torch.float32)
        x = self.pack(initial_noise[rows].float()).to(self.device)
        sigmas, timesteps = self.schedule(x.shape[1])
        T = len(timesteps)
        s = self.sampler_cfg
        width = s.sde_window
        if s.sde_window_placement == "random" and width and width < T:
            # uniform over the window's positions, from the rollout's generator: the same on every rank
            starts = window_starts(T, width, s.sde_window_range)
            sde_window_start = int(torch.randint(0, starts, (1,), generator=generator))
        else:
            sde_window_start //= s.sde_window_slide_every
        window = sde_window(T, width, sde_window_start, s.sde_window_range)
        noise_level = self.noise_level if noise_level is None else noise_level
        meta = {"sigmas": sigmas, "timesteps": timesteps, "noise_level": noise_level,
                "sde_mask": torch.tensor([m and self._noisy(sigmas, i, noise_level) for i, m in enumerate(window)])}

        chunk = self.rollout_batch or N
        traj, logps, means = [x.float().cpu()], [], []
        for step in range(T):
            noise = None
            if meta["sde_mask"][step]:
                noise = torch.randn((P * G, *x.shape[1:]), generator=generator, dtype=torch.float32)[rows]
            steps = torch.full((N,), step, dtype=torch.long)
            outs = [
                self._transition(x[i : i + chunk], steps[i : i + chunk], meta, cond, prompt_index[i : i + chunk],
                                 noise=None if noise is None else noise[i : i + chunk])
                for i in range(0, N, chunk)
            ]
            x = torch.cat([o.prev_sample for o in outs])
            logps.append(torch.cat([o.log_prob for o in outs]).cpu())
            if keep_means:
                means.append(torch.cat([o.mean for o in outs]).float().cpu())
            traj.append(x.cpu())
        with self.visiting():
            images = self.decode(x, cond)
        group_of_key = {k: i for i, k in enumerate(dict.fromkeys(batch.keys))}
        group_ids = torch.tensor([group_of_key[batch.keys[p]] for p in global_prompt.tolist()])
        return Rollout(
            latents=torch.stack(traj, dim=1), log_probs=torch.stack(logps, dim=1), sigmas=sigmas,
            timesteps=timesteps, sde_mask=meta["sde_mask"], images=images,
            sources=batch.sources[global_prompt].cpu(),
            instructions=[batch.instructions[p] for p in global_prompt.tolist()],
            group_ids=group_ids, prompt_index=prompt_index, cond=cond,
            metadata=[dict(batch.metadata[p]) if batch.metadata else {} for p in global_prompt.tolist()],
            means=torch.stack(means, dim=1) if keep_means else None,
            references=None if batch.references is None else [batch.references[p] for p in global_prompt.tolist()],
        )

    # ----------------------------------------------------------------- training-side calls
    def step_logprob(self, rollout: Rollout, sample_idx: torch.Tensor, steps: torch.Tensor | int) -> StepOutput:
        """Log-prob of the recorded transitions ``steps`` (one per sample, or one for all) of ``sample_idx``
        under the current weights."""
        steps = torch.as_tensor(steps, dtype=torch.long).expand(len(sample_idx))
        meta = {"sigmas": rollout.sigmas, "timesteps": rollout.timesteps, "sde_mask": rollout.sde_mask}
        return self._transition(
            rollout.latents[sample_idx, steps].to(self.device), steps, meta, rollout.cond,
            rollout.prompt_index[sample_idx], prev_sample=rollout.latents[sample_idx, steps + 1].to(self.device),
        )

    @contextmanager
    def reference(self):
        """The reference policy: the same transformer with the LoRA adapter disabled (full fine-tuning: the
        frozen copy of the starting weights)."""
        if self.full:
            trained, self.transformer = self.transformer, self.reference_transformer
            try:
                yield self
            finally:
                self.transformer = trained
            return
        self.transformer.disable_adapters()
        try:
            yield self
        finally:
            self.transformer.enable_adapters()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        if self.full:
            return list(self.transformer.parameters())
        return [p for n, p in self.transformer.named_parameters() if "lora_" in n]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained weights (LoRA, or the whole transformer), full tensors on the CPU. With a sharded
        transformer this is a collective: every rank must call it."""
        if self.full:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(self.transformer, options=StateDictOptions(full_state_dict=True,
                                                                                    cpu_offload=True))
            return {k: v.detach().cpu().clone() for k, v in state.items()}
        return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(self.transformer).items()}

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.full:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self.transformer, state, options=StateDictOptions(full_state_dict=True))
            return
        result = set_peft_model_state_dict(self.transformer, state)
        unexpected = getattr(result, "unexpected_keys", None) or []
        if unexpected:
            raise UserError(f"checkpoint adapter has keys this policy lacks, e.g. '{unexpected[0]}' "
                            f"(another model or LoRA target set?)")
        for p in self.trainable_parameters():  # peft may cast loaded weights to the base dtype
            p.data = p.data.float()

    def save_lora(self, directory: str, state: dict[str, torch.Tensor] | None = None) -> None:
        """Write the trained weights in the diffusers format: the LoRA (`pytorch_lora_weights.safetensors`,
        for `load_lora_weights`), or with full fine-tuning the transformer folder (`transformer/`, for
        `from_pretrained`). ``state``: an `adapter_state_dict()` already gathered (sharded models)."""
        state = self.adapter_state_dict() if state is None else state
        if self.full:
            from safetensors.torch import save_file

            folder = Path(directory) / "transformer"
            folder.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in state.items()}, folder / "diffusion_pytorch_model.safetensors")
            self.reference_transformer.save_config(folder)  # the same config as the trained model
            return
        # The adapter's config travels in the file's metadata (diffusers' `lora_adapter_metadata`): without it
        # `load_lora_weights` assumes alpha = rank and loads the LoRA at rank / alpha of its trained strength.
        peft_config = self.transformer.peft_config["default"]
        self.pipeline_class.save_lora_weights(directory, transformer_lora_layers=state, safe_serialization=True,
                                              transformer_lora_adapter_metadata=peft_config.to_dict())
        peft_config.save_pretrained(directory)  # adapter_config.json, as peft and the Hub expect beside a LoRA
        # the same adapter in peft's own layout: PeftModel.from_pretrained(transformer, directory) loads it
        from safetensors.torch import save_file

        save_file({f"base_model.model.{k}": v.contiguous() for k, v in state.items()},
                  Path(directory) / "adapter_model.safetensors", metadata={"format": "pt"})
