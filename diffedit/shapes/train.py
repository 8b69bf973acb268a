"""Train the embedded default model of the shapes world on CPU: a small latent diffusion model.

Phases, one process, one thread by default:

1. VAE: ``AutoencoderKL`` with three blocks (stride 4: 64x64x3 images -> 16x16x4 latents), trained on
   fresh scenes with an MSE + L1 reconstruction loss of the posterior mean and a small KL term. Its ``scaling_factor`` is
   then set to 1 / std of the posterior-mode latents of held-aside training scenes, so that scaled
   latents have unit variance, and a fixed set of training scenes is encoded once (posterior mode,
   as DiffEdit encodes its inputs).
2. Diffusion: ``UNet2DConditionModel`` with cross-attention, jointly with a small ``CLIPTextModel``,
   on the epsilon objective with DDPM noise on Stable Diffusion's scaled_linear schedule
   (beta 0.00085 -> 0.012, 1000 steps). The caption is replaced by the empty prompt 10% of the time
   (classifier-free guidance). An EMA of the UNet weights is what gets exported. Optionally
   (shapes-v3) part of each batch is *edit pairs* (``dataset.edit_pair_input``: the noisy input
   shows the source object, the target leads to the edited one, under the edited caption), the
   squared error is weighted towards object cells, and scenes have more objects (``--object-probs``).
3. Optionally, decoder-only fine-tuning of the VAE (the latent space stays fixed).

``--init-model DIR`` skips phase 1 and fine-tunes an exported model instead (its VAE, scaling
factor and tokenizer kept; the dataset encoded afresh).

All randomness is seeded; a checkpoint (``<out>/train_state/state.pt``) is written every
``--ckpt-every-s`` seconds and at each phase end, and ``--resume`` continues from it. Loss and speed
go to stdout and ``<out>/train_state/train.log``. The result is a diffusers Stable Diffusion
directory (safetensors) that loads with ``StableDiffusionPipeline.from_pretrained(out)``.

    python -m diffedit.shapes.train --out out/shapes-v2 --threads 2 --unet-steps 15000 --decoder-steps 2000
    python -m diffedit.shapes.train --out out/shapes-v3 --threads 2 --init-model models/shapes-v2 \
        --n-data 40000 --n-pairs 24000 --object-probs 0.25,0.35,0.4 --p-pair 0.25 --object-weight 2 \
        --unet-lr 3e-4 --unet-steps 9000
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffedit.loading.layout import FLOW_SCHEDULER_CLASS, names_flow_scheduler
from diffedit.shapes import dataset
from diffedit.shapes.dataset import images_tensor
from diffedit.shapes.posterior import POSTERIOR_STD, set_posterior_std
from diffedit.shapes.scenes import sample_scene
from diffedit.shapes.vocab import build_shapes_tokenizer
from diffedit.tiny import SD_SCHEDULER_CONFIG, save_sd_directory

#: Seeds of the VAE phase, the scaling-factor estimate, the cached diffusion dataset and its edit pairs; all inside
#: ``scenes.TRAIN_SEEDS`` = [0, 10_000_000) and disjoint from each other.
VAE_SEED_BASE = 5_000_000
SCALE_SEED_BASE = 9_000_000
DATA_SEED_BASE = 0
#: Scenes of the edit pairs (``--n-pairs``; ``scenes.train_edit_pair``).
PAIR_SEED_BASE = 3_000_000

IMAGE_SIZE = 64
LATENT_SIZE = 16
#: A flow model's time input is s * 1000, as ``FlowMatchEulerDiscreteScheduler.timesteps`` gives it.
FLOW_TIME_SCALE = 1000.0


def flow_scheduler_config(shift: float) -> dict[str, Any]:
    """The scheduler config of a flow-trained shapes model: rectified flow on the shifted grid that its
    training levels follow (``dataset.flow_level``)."""
    return {"_class_name": FLOW_SCHEDULER_CLASS, "num_train_timesteps": int(FLOW_TIME_SCALE), "shift": shift}


# --------------------------------------------------------------------------- models


def build_vae(seed: int) -> Any:
    """A stride-4 AutoencoderKL: 64x64x3 <-> 16x16x4."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,  # groups of >= 4 channels: one channel per group would normalise colour away
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
    )


def build_text_encoder(seed: int, vocab_size: int, max_length: int, hidden: int = 64) -> Any:
    """A small CLIP text encoder over the shapes vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            num_attention_heads=4,
            num_hidden_layers=3,
            vocab_size=vocab_size,
            max_position_embeddings=max_length,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            projection_dim=hidden,
        )
    )


def build_unet(
    seed: int,
    cross_attention_dim: int = 64,
    channels: tuple[int, ...] = (32, 64, 128),
    attention_at_top: bool = True,
) -> Any:
    """A UNet2DConditionModel on 16x16 latents with self- and cross-attention.

    Levels at 16x16, 8x8 and 4x4, plus the middle block, all attend to the caption; with
    ``attention_at_top=False`` the 16x16 level has plain ResNet blocks (shapes-v1's layout: half the
    step time, but objects come out as blobs, and a caption word can only reach a 4x4-pixel latent
    cell through the 8x8 level). Heads of 32 channels.
    """
    from diffusers import UNet2DConditionModel

    top_down = "CrossAttnDownBlock2D" if attention_at_top else "DownBlock2D"
    top_up = "CrossAttnUpBlock2D" if attention_at_top else "UpBlock2D"
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=(top_down,) + ("CrossAttnDownBlock2D",) * (len(channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(channels) - 1) + (top_up,),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=tuple(c // 32 for c in channels),  # a head count, despite the name
        use_linear_projection=True,
        norm_num_groups=8,
    )


def build_diffusion_models(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Tokenizer, text encoder and UNet of the diffusion phase, as ``args`` lay them out; the one
    place that training and export build them, so the exported layout is the trained one."""
    if getattr(args, "init_model", None):  # the model's own tokenizer: its ids are the ones trained
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(Path(args.init_model) / "tokenizer")
    else:
        tokenizer = build_shapes_tokenizer()
    text_encoder = build_text_encoder(args.seed + 2, len(tokenizer), tokenizer.model_max_length)
    unet = build_unet(
        args.seed + 1,
        cross_attention_dim=text_encoder.config.hidden_size,
        attention_at_top=args.attention_at_top,
    )
    return tokenizer, text_encoder, unet


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- data


def scene_batch(seeds: list[int]) -> tuple[torch.Tensor, list[str]]:
    """Images in [-1, 1] and captions of the scenes of ``seeds``.  # (B, 3, 64, 64)"""
    scenes = [sample_scene(s, IMAGE_SIZE) for s in seeds]
    return images_tensor([s.image for s in scenes]), [s.caption for s in scenes]


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's max length.  # (B, L)"""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def alphas_cumprod() -> torch.Tensor:
    """Stable Diffusion's scaled_linear schedule, cumulative alphas.  # (1000,)"""
    c = SD_SCHEDULER_CONFIG
    betas = torch.linspace(c["beta_start"] ** 0.5, c["beta_end"] ** 0.5, c["num_train_timesteps"]) ** 2
    return torch.cumprod(1.0 - betas.double(), dim=0).float()


# --------------------------------------------------------------------------- logging / state


class Logger:
    """Print and append to a log file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")


#: CPU seconds of earlier runs (from the checkpoint) and process_time() at this run's start.
_CPU_CLOCK = {"before": 0.0, "start": 0.0}


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Atomic torch.save; records the CPU seconds spent so far, over all resumed runs."""
    state["cpu_seconds"] = _CPU_CLOCK["before"] + time.process_time() - _CPU_CLOCK["start"]
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def lr_at(step: int, total: int, peak: float, warmup: int = 200) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


# --------------------------------------------------------------------------- phases


def train_vae(args: argparse.Namespace, state: dict[str, Any], log: Logger, ckpt: Path) -> None:
    """Phase 1: VAE reconstruction training; fills state['vae'] and state['vae_done']."""
    vae = build_vae(args.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    step = 0
    if "vae" in state:
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["vae_opt"])
        step = state["vae_step"]
        log(f"vae: resumed at step {step}")
    log(f"vae: {num_params(vae) / 1e6:.2f} M params, {args.vae_steps} steps at batch {args.vae_batch}")
    last_ckpt = time.time()
    t0, step0 = time.time(), step
    ema_loss = None
    vae.train()
    while step < args.vae_steps:
        seeds = [VAE_SEED_BASE + step * args.vae_batch + j for j in range(args.vae_batch)]
        images, _ = scene_batch(seeds)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.vae_steps, args.vae_lr, warmup=100)
        posterior = vae.encode(images).latent_dist
        # The posterior mean, not a sample: at initialisation the posterior std (1) drowns the
        # signal and the decoder learns several times slower; DiffEdit encodes with the mode anyway.
        z = posterior.mean
        recon = vae.decode(z).sample
        rec = F.mse_loss(recon, images) + 0.5 * F.l1_loss(recon, images)
        kl = posterior.kl().mean() / (LATENT_SIZE * LATENT_SIZE * 4)
        loss = rec + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        ema_loss = rec.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * rec.item()
        if step % args.log_every == 0 or step == args.vae_steps:
            mse = F.mse_loss(recon, images).item()
            psnr = 10 * math.log10(4.0 / max(mse, 1e-12))  # images span 2 (-1..1)
            log(
                f"vae step {step}/{args.vae_steps} rec {rec.item():.5f} (ema {ema_loss:.5f}) "
                f"kl {kl.item():.3f} psnr {psnr:.2f} dB {(time.time() - t0) / (step - step0):.3f} s/step"
            )
        if time.time() - last_ckpt > args.ckpt_every_s or step == args.vae_steps:
            state.update(vae=vae.state_dict(), vae_opt=opt.state_dict(), vae_step=step)
            save_state(ckpt, state)
            last_ckpt = time.time()
    state["vae_losses"] = {"reconstruction_ema": ema_loss}
    state["vae_done"] = True
    state.pop("vae_opt", None)
    save_state(ckpt, state)


@torch.no_grad()
def encode_dataset(args: argparse.Namespace, state: dict[str, Any], log: Logger, ckpt: Path) -> None:
    """Scaling factor from held-aside scenes (unless the state has one: ``--init-model``); then the
    cached dataset (``dataset.py``): posterior-mode latents of ``--n-data`` scenes with their object
    cells, and ``--n-pairs`` encoded edit pairs."""
    vae = build_vae(args.seed)
    vae.load_state_dict(state["vae"])
    vae.eval()
    if "scaling_factor" not in state:
        modes = []
        for k in range(0, 512, 64):
            images, _ = scene_batch([SCALE_SEED_BASE + k + j for j in range(64)])
            modes.append(vae.encode(images).latent_dist.mode())
        std = torch.cat(modes).std().item()
        state["scaling_factor"] = 1.0 / std
        log(f"latent std {std:.4f} -> scaling_factor {state['scaling_factor']:.4f}")
    scaling = state["scaling_factor"]
    t0 = time.time()
    data = dataset.encode_chunked(
        dataset.encode_scenes,
        range(DATA_SEED_BASE, DATA_SEED_BASE + args.n_data),
        vae=vae,
        scaling=scaling,
        object_probs=args.object_probs,
    )
    state.update(latents=data["latents"], captions=data["captions"], objects=data["objects"])
    log(f"encoded {args.n_data} training scenes in {time.time() - t0:.0f} s")
    if args.n_pairs:
        t0 = time.time()
        state["pairs"] = dataset.encode_chunked(
            dataset.encode_pairs,
            range(PAIR_SEED_BASE, PAIR_SEED_BASE + args.n_pairs),
            vae=vae,
            scaling=scaling,
            object_probs=args.object_probs,
            p_recolor=args.pair_recolor,
        )
        log(f"encoded {args.n_pairs} edit pairs in {time.time() - t0:.0f} s")
    state["data_done"] = True
    save_state(ckpt, state)


def train_diffusion(args: argparse.Namespace, state: dict[str, Any], log: Logger, ckpt: Path) -> None:
    """Phase 2: UNet + text encoder on the epsilon objective (``--objective flow``: the rectified-flow
    velocity objective, ``dataset.flow_input``, at levels s = ``dataset.flow_level(u, flow_shift)``, u
    uniform, time input 1000 s); fills state['unet_ema'] etc.

    Each batch holds ``round(p_pair * batch)`` edit pairs (``dataset.edit_pair_input``, t drawn from
    [pair_t_min, 1000), never caption-dropped: the unconditional model stays a plain denoiser) and
    scenes for the rest. With ``object_weight`` w, each latent cell's squared error is weighted
    1 + w * (fraction of the cell covered by objects), normalised by the batch's total weight.
    """
    tokenizer, text_encoder, unet = build_diffusion_models(args)
    ema = copy.deepcopy(unet).requires_grad_(False)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=0.01)
    step = state.get("unet_step", 0)
    if "unet" in state:  # a checkpoint, or --init-model's weights (step 0, no optimiser state)
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["unet_ema"])
        text_encoder.load_state_dict(state["text_encoder"])
        if "unet_opt" in state:
            opt.load_state_dict(state["unet_opt"])
        log(f"unet: resumed at step {step}" if step else "unet: starting from --init-model's weights")
    log(
        f"unet: {num_params(unet) / 1e6:.2f} M params, text encoder {num_params(text_encoder) / 1e6:.2f} M; "
        f"{args.unet_steps} steps at batch {args.batch}"
    )
    latents_all = state["latents"]  # (N, 4, 16, 16) float16
    ids_all = tokenize(tokenizer, state["captions"])  # (N, L)
    objects_all = state.get("objects")  # (N, 1, 16, 16) float16, cell fraction covered by objects
    if args.object_weight and objects_all is None:
        raise SystemExit(
            "--object-weight needs object cells in the encoded dataset (made before they existed)"
        )
    pairs = state.get("pairs")
    n_pair = round(args.p_pair * args.batch) if pairs else 0
    if args.p_pair and not pairs:
        raise SystemExit("--p-pair needs edit pairs in the encoded dataset (--n-pairs when it is encoded)")
    pair_ids = tokenize(tokenizer, pairs["captions"]) if pairs else None  # (P, L)
    empty_ids = tokenize(tokenizer, [""])  # (1, L)
    acp = alphas_cumprod()
    flow = args.objective == "flow"
    n = latents_all.shape[0]
    gen = torch.Generator()
    t0, step0 = time.time(), step
    last_ckpt = time.time()
    ema_loss = state.get("unet_loss_ema")
    unet.train()
    text_encoder.train()
    while step < args.unet_steps:
        gen.manual_seed(args.seed * 1_000_003 + step)  # resumable: one generator state per step
        b = args.batch - n_pair  # scenes in this batch
        idx = torch.randint(0, n, (b,), generator=gen)
        x0 = latents_all[idx].float()  # (b, 4, 16, 16)
        ids = ids_all[idx].clone()  # (b, L)
        drop = torch.rand(b, generator=gen) < args.p_uncond
        ids[drop] = empty_ids
        if flow:  # rectified flow: x_s = (1 - s) x0 + s eps, target v = eps - x0, time input 1000 s
            u = torch.rand(b, generator=gen)  # (b,)
            s_level = dataset.flow_level(u, args.flow_shift)  # (b,)
            noise = torch.randn(x0.shape, generator=gen)
            xt, target = dataset.flow_input(x0, noise, s_level.view(-1, 1, 1, 1))  # (b, 4, 16, 16) each
            t = s_level * FLOW_TIME_SCALE  # (b,) float
        else:
            t = torch.randint(0, acp.shape[0], (b,), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            a = acp[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            target = noise
        cells = objects_all[idx].float() if objects_all is not None else torch.zeros_like(x0[:, :1])
        if n_pair:
            pidx = torch.randint(0, len(pair_ids), (n_pair,), generator=gen)
            pair_latents = (
                pairs["source"][pidx].float(),
                pairs["target"][pidx].float(),
                pairs["region"][pidx].float(),
            )
            if flow:  # the same share of the time range as the VP pairs: u in [pair_t_min / 1000, 1)
                u_min = args.pair_t_min / FLOW_TIME_SCALE
                pu = u_min + (1 - u_min) * torch.rand(n_pair, generator=gen)  # (n_pair,)
                ps = dataset.flow_level(pu, args.flow_shift)  # (n_pair,)
                pnoise = torch.randn((n_pair, *x0.shape[1:]), generator=gen)
                pxt, ptarget = dataset.edit_pair_flow_input(*pair_latents, pnoise, ps.view(-1, 1, 1, 1))
                pt = ps * FLOW_TIME_SCALE  # (n_pair,)
            else:
                pt = torch.randint(args.pair_t_min, acp.shape[0], (n_pair,), generator=gen)
                pnoise = torch.randn((n_pair, *x0.shape[1:]), generator=gen)
                pxt, ptarget = dataset.edit_pair_input(*pair_latents, pnoise, acp[pt].view(-1, 1, 1, 1))
            xt, target, t = torch.cat([xt, pxt]), torch.cat([target, ptarget]), torch.cat([t, pt])
            ids = torch.cat([ids, pair_ids[pidx]])
            cells = torch.cat([cells, pairs["objects"][pidx].float()])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.unet_steps, args.unet_lr)
        emb = text_encoder(ids)[0]  # (B, L, D)
        pred = unet(xt, t, encoder_hidden_states=emb).sample
        weight = 1.0 + args.object_weight * cells  # (B, 1, 16, 16)
        loss = ((pred - target) ** 2 * weight).sum() / (weight.sum() * pred.shape[1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        ema_loss = loss.item() if ema_loss is None else 0.99 * ema_loss + 0.01 * loss.item()
        if step % args.log_every == 0 or step == args.unet_steps:
            log(
                f"unet step {step}/{args.unet_steps} loss {loss.item():.4f} (ema {ema_loss:.4f}) "
                f"lr {opt.param_groups[0]['lr']:.2e} {(time.time() - t0) / (step - step0):.3f} s/step"
            )
        if time.time() - last_ckpt > args.ckpt_every_s or step == args.unet_steps:
            state.update(
                unet=unet.state_dict(),
                unet_ema=ema.state_dict(),
                text_encoder=text_encoder.state_dict(),
                unet_opt=opt.state_dict(),
                unet_step=step,
                unet_loss_ema=ema_loss,
            )
            save_state(ckpt, state)
            last_ckpt = time.time()
    state["unet_done"] = True
    save_state(ckpt, state)


def finetune_decoder(args: argparse.Namespace, state: dict[str, Any], log: Logger, ckpt: Path) -> None:
    """Phase 3 (optional): train the VAE decoder alone on posterior-mode latents.

    The encoder, hence the latent space the UNet was trained in, stays fixed; only reconstructions
    get sharper. Fresh scenes from the VAE seed range, continuing after phase 1's.
    """
    vae = build_vae(args.seed)
    vae.load_state_dict(state["vae"])
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.decoder_lr, weight_decay=0.0)
    step = 0
    if "dec_opt" in state:
        opt.load_state_dict(state["dec_opt"])
        step = state["dec_step"]
        log(f"decoder: resumed at step {step}")
    log(f"decoder: {sum(p.numel() for p in params) / 1e6:.2f} M params, {args.decoder_steps} steps")
    t0, step0, last_ckpt = time.time(), step, time.time()
    ema_loss = state.get("dec_loss_ema")
    base = VAE_SEED_BASE + args.vae_steps * args.vae_batch
    vae.train()
    while step < args.decoder_steps:
        seeds = [base + step * args.vae_batch + j for j in range(args.vae_batch)]
        images, _ = scene_batch(seeds)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.decoder_steps, args.decoder_lr, warmup=50)
        with torch.no_grad():
            z = vae.encode(images).latent_dist.mode()
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, images) + 0.5 * F.l1_loss(recon, images)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if step % args.log_every == 0 or step == args.decoder_steps:
            psnr = 10 * math.log10(4.0 / max(F.mse_loss(recon, images).item(), 1e-12))
            log(
                f"decoder step {step}/{args.decoder_steps} rec {loss.item():.5f} (ema {ema_loss:.5f}) "
                f"psnr {psnr:.2f} dB {(time.time() - t0) / (step - step0):.3f} s/step"
            )
        if time.time() - last_ckpt > args.ckpt_every_s or step == args.decoder_steps:
            state.update(vae=vae.state_dict(), dec_opt=opt.state_dict(), dec_step=step, dec_loss_ema=ema_loss)
            save_state(ckpt, state)
            last_ckpt = time.time()
    state["decoder_done"] = True
    save_state(ckpt, state)


def export(args: argparse.Namespace, state: dict[str, Any], log: Logger) -> Path:
    """Write the diffusers Stable Diffusion directory (EMA UNet weights)."""
    out = Path(args.out)
    vae = build_vae(args.seed)
    vae.load_state_dict(state["vae"])
    vae.register_to_config(scaling_factor=float(state["scaling_factor"]))
    # The log-variance half of quant_conv only ever saw the KL gradient (phase 1 reconstructs the
    # mean), which leaves the posterior std ~1: export a narrow posterior instead (posterior.py).
    set_posterior_std(vae, POSTERIOR_STD)
    tokenizer, text_encoder, unet = build_diffusion_models(args)
    text_encoder.load_state_dict(state["text_encoder"])
    unet.load_state_dict(state["unet_ema"])
    save_sd_directory(
        out,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=flow_scheduler_config(args.flow_shift)
        if args.objective == "flow"
        else SD_SCHEDULER_CONFIG,
    )
    summary = {
        "objective": args.objective,
        "vae_steps": state.get("vae_step"),
        "unet_steps": state.get("unet_step"),
        "scaling_factor": state["scaling_factor"],
        "vae_reconstruction_loss_ema": state.get("vae_losses", {}).get("reconstruction_ema"),
        "decoder_steps": state.get("dec_step", 0),
        "decoder_reconstruction_loss_ema": state.get("dec_loss_ema"),
        "unet_loss_ema": state.get("unet_loss_ema"),
        "params": {
            "unet": num_params(unet),
            "vae": num_params(vae),
            "text_encoder": num_params(text_encoder),
        },
        "cpu_seconds": state.get("cpu_seconds"),
        "args": {k: v for k, v in vars(args).items() if k not in ("resume",)},
    }
    (out / "train_state").mkdir(parents=True, exist_ok=True)
    (out / "train_state" / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"exported to {out}: {json.dumps(summary)}")
    return out


#: State keys of phases 1-2 (and of the optional decoder fine-tuning) that ``--init-from`` copies.
_VAE_PHASE_KEYS = (
    "vae",
    "vae_step",
    "vae_losses",
    "vae_done",
    "scaling_factor",
    "latents",
    "captions",
    "objects",
    "pairs",
    "data_done",
)
_DECODER_KEYS = ("dec_step", "dec_loss_ema", "dec_opt", "decoder_done")


#: Arguments that shape the encoded dataset besides the VAE's and ``n_data``.
_DATA_ARGS = ("object_probs", "n_pairs", "pair_recolor", "init_model")


def init_model(path: Path, args: argparse.Namespace, log: Logger) -> dict[str, Any]:
    """A fresh state that fine-tunes an exported model (a diffusers directory this script wrote).

    Its VAE (with its scaling factor and any decoder fine-tuning) is kept as it is, so the latent
    space is the one its UNet learned; the UNet, its EMA and the text encoder start from its weights
    (the exported UNet is the EMA one); the dataset is encoded afresh by its VAE.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    if not (path / "unet" / "config.json").is_file():
        raise SystemExit(f"{path}: not a Stable Diffusion directory (no unet/config.json)")
    # Its UNet predicts what its objective trained: fine-tuning it on another parameterisation would
    # silently retrain the output's meaning. eps -> flow is the re-expression (--objective flow); a flow
    # model stays flow, at the shift its levels were trained on.
    index = json.loads((path / "model_index.json").read_text())
    if names_flow_scheduler(index):
        shift = json.loads((path / "scheduler" / "scheduler_config.json").read_text()).get("shift", 1.0)
        if args.objective != "flow":
            raise SystemExit(
                f"{path}: its UNet was trained on the flow objective (scheduler {FLOW_SCHEDULER_CLASS}); "
                f"--objective {args.objective} would retrain what it predicts: pass --objective flow "
                f"--flow-shift {shift:g}"
            )
        if float(shift) != float(args.flow_shift):
            raise SystemExit(
                f"{path}: its flow levels were trained at shift {shift:g}, not --flow-shift {args.flow_shift:g}"
            )
    vae = AutoencoderKL.from_pretrained(path / "vae")
    unet = UNet2DConditionModel.from_pretrained(path / "unet")
    mine = build_diffusion_models(args)[2]

    def layout(config: Any) -> Any:  # JSON's view: tuples and lists alike
        return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))

    if layout(unet.config) != layout(mine.config):
        raise SystemExit(f"{path}: its UNet's layout differs from this run's arguments (--attention-at-top)")
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder")
    log(
        f"fine-tuning {path}: UNet, text encoder and VAE from there (scaling_factor {vae.config.scaling_factor})"
    )
    return {
        "vae": vae.state_dict(),
        "vae_done": True,
        "decoder_done": True,
        "scaling_factor": float(vae.config.scaling_factor),
        "unet": unet.state_dict(),
        "unet_ema": unet.state_dict(),
        "text_encoder": text_encoder.state_dict(),
        "cpu_seconds": 0.0,
        "init_model": str(path),
    }


def init_from(path: Path, args: argparse.Namespace, log: Logger) -> dict[str, Any]:
    """A fresh state holding another run's VAE, encoded dataset and decoder fine-tuning.

    The encoder (hence the latent space and the cached latents) must come from the same VAE and data
    arguments, which is checked against that run's recorded arguments; the UNet and text encoder
    are not copied.
    """
    src = torch.load(path, weights_only=False)
    if not src.get("data_done"):
        raise SystemExit(f"{path}: phases 1-2 (VAE, encoded dataset) are not finished there")
    theirs = src.get("args")
    if theirs is None and (path.parent / "summary.json").exists():  # runs before "args" was kept in the state
        theirs = json.loads((path.parent / "summary.json").read_text()).get("args")
    if theirs is None:
        raise SystemExit(
            f"{path}: no recorded arguments there (state['args'] or summary.json) to check against"
        )
    for key in ("seed", "vae_steps", "vae_batch", "vae_lr", "vae_kl", "n_data", *_DATA_ARGS):
        if key in theirs and theirs[key] != getattr(args, key):
            raise SystemExit(f"{path}: {key}={theirs[key]!r} there, {getattr(args, key)!r} here")
    state = {k: src[k] for k in _VAE_PHASE_KEYS + _DECODER_KEYS if k in src}
    state["cpu_seconds"] = 0.0
    state["init_from"] = {"path": str(path), "cpu_seconds_there": src.get("cpu_seconds")}
    log(f"phases 1-2 taken from {path} (decoder fine-tuned {state.get('dec_step', 0)} steps there)")
    return state


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 leaves a core free)")
    p.add_argument("--vae-steps", type=int, default=1200)
    p.add_argument("--vae-batch", type=int, default=12)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--vae-kl", type=float, default=1e-4, help="weight of the per-element KL term")
    p.add_argument("--n-data", type=int, default=30_000, help="cached training scenes for the UNet")
    p.add_argument(
        "--object-probs",
        type=lambda v: tuple(float(x) for x in v.split(",")),
        default=None,
        metavar="P1,P2,P3",
        help="probabilities of 1, 2 and 3 objects in the training scenes and pairs (default: the scenes' own "
        "draw, scenes.N_OBJECT_PROBS)",
    )
    p.add_argument("--n-pairs", type=int, default=0, help="cached edit pairs (scenes.train_edit_pair)")
    p.add_argument("--pair-recolor", type=float, default=0.5, help="share of recolours among the edit pairs")
    p.add_argument("--p-pair", type=float, default=0.0, help="share of each batch that is edit pairs")
    p.add_argument(
        "--pair-t-min", type=int, default=300, help="edit pairs are trained at t in [pair_t_min, 1000)"
    )
    p.add_argument(
        "--object-weight",
        type=float,
        default=0.0,
        help="loss weight 1 + w * (object cover) per latent cell (0: plain MSE)",
    )
    p.add_argument(
        "--objective",
        choices=("eps", "flow"),
        default="eps",
        help="eps: DDPM noise prediction on SD's VP schedule; flow: rectified-flow velocity (v = eps - x0 at "
        "x_s = (1 - s) x0 + s eps), exported with a FlowMatchEulerDiscreteScheduler",
    )
    p.add_argument(
        "--flow-shift",
        type=float,
        default=2.0,
        help="flow objective: the time shift of the training levels and of the exported scheduler",
    )
    p.add_argument("--unet-steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--unet-lr", type=float, default=8e-4)
    p.add_argument("--decoder-steps", type=int, default=0, help="phase 3: decoder-only fine-tuning")
    p.add_argument("--decoder-lr", type=float, default=1e-3)
    p.add_argument("--p-uncond", type=float, default=0.1, help="caption dropout for CFG")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument(
        "--attention-at-top",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="self- and cross-attention at the UNet's 16x16 level (--no-attention-at-top: shapes-v1's layout)",
    )
    p.add_argument(
        "--init-from",
        metavar="STATE_PT",
        help="take phases 1-2 (VAE, scaling factor, encoded dataset) and any decoder fine-tuning from "
        "another run's train_state/state.pt made with the same VAE and data arguments; the diffusion "
        "phase starts fresh",
    )
    p.add_argument(
        "--init-model",
        metavar="DIR",
        help="fine-tune a model this script exported (its VAE kept, its UNet and text encoder trained further, "
        "its tokenizer used); the dataset is encoded afresh with its VAE",
    )
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--ckpt-every-s", type=float, default=180.0)
    p.add_argument("--resume", action="store_true", help="continue from <out>/train_state/state.pt")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    state_dir = out / "train_state"
    ckpt = state_dir / "state.pt"
    log = Logger(state_dir / "train.log")
    state: dict[str, Any] = {}
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        log(f"resuming from {ckpt}")
    elif ckpt.exists():
        raise SystemExit(f"{ckpt} exists: pass --resume to continue, or remove it")
    elif args.init_from and args.init_model:
        raise SystemExit("--init-from and --init-model exclude each other")
    elif args.init_from:
        state = init_from(Path(args.init_from), args, log)
    elif args.init_model:
        state = init_model(Path(args.init_model), args, log)
    log(f"args: {vars(args)}")
    state["args"] = {k: v for k, v in vars(args).items() if k != "resume"}
    wall0 = time.time()
    _CPU_CLOCK.update(before=state.get("cpu_seconds", 0.0), start=time.process_time())
    if not state.get("vae_done"):
        train_vae(args, state, log, ckpt)
    if not state.get("data_done"):
        encode_dataset(args, state, log, ckpt)
    if not state.get("unet_done") or state.get("unet_step", 0) < args.unet_steps:  # or more steps asked
        train_diffusion(args, state, log, ckpt)
    if args.decoder_steps and (
        not state.get("decoder_done") or state.get("dec_step", 0) < args.decoder_steps
    ):
        finetune_decoder(args, state, log, ckpt)
    save_state(ckpt, state)
    export(args, state, log)
    log(f"done: wall {time.time() - wall0:.0f} s this run, cpu {state['cpu_seconds']:.0f} s in all")


if __name__ == "__main__":
    main()
