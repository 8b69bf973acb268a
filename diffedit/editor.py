"""``DiffEditor``: the three DiffEdit stages over a list of rows, with the model resident.

Per call of ``edit``:
  1. validate every request, convert images to RGB and to the model's resolution (diffedit.images);
  2. bucket rows by (model resolution, DDIM steps, encode steps, encode method) — rows of a bucket
     go through every stage together, their samples batched into UNet calls of at most
     ``max_batch`` (the n mask draws and both texts of all rows in one flat batch);
  3. text embeddings once per unique prompt (kept in an LRU cache across calls), then each row's own
     conditioning from them (SDXL: the row's size conditions, ``ModelBundle.condition_rows``);
  4. VAE encode -> step 1 mask -> step 2 encode -> step 3 decode -> VAE decode -> scores
     (``diffedit.scores``, when the editor has a ``Scoring``);
  5. results resized back to each input's original size, with counters;
  6. with a ``Selection`` of K candidates, each row is edited K times with seeds derived from its own
     (``diffedit.select``) and the best by the selection's weighted score is returned, with every
     candidate's seed and scores.

Shared work: the VAE encode and the DDIM inversion do not depend on the seed or the query, so the rows of
a bucket with the same input pixels and encode settings (a request's candidates, several queries on one
image) share one of each (``_source_key``), and an LRU of trajectories (``trajectory_cache``) extends
that to rows of later calls; each row's ``unet_evals_encode`` is its share of the inversion it used
(0 when it came from the cache).

No hidden randomness: each row's draws come from generators seeded from the row's seed (one stream
per stage, ``stage_generator``), and every per-row statistic is computed from that row alone, so a
row's result does not depend on its batch-mates (to float tolerance).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffedit.bundle import ModelBundle
from diffedit.decode import ddim_decode
from diffedit.encode import ddim_encode, noise_encode
from diffedit.images import map_to_pil, model_resolution, pil_to_tensor, tensor_to_pil, to_rgb
from diffedit.mask import diffedit_mask
from diffedit.params import EditParams
from diffedit.schedule import mask_level
from diffedit.scores import Scoring, alignment_errors, alignment_score, mask_statistics, preservation
from diffedit.select import Selection, candidate_params, candidate_seed, choose

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class EditRequest:
    image: Image.Image  # any size and supported mode
    query: str  # Q, the edit text (required, non-empty)
    caption: str = ""  # R, the reference text; "" = the empty prompt
    seed: int = 0  # seeds every random draw of this row
    params: EditParams | None = None  # None: the editor's parameters
    id: str = ""  # carried through to the result
    mask: np.ndarray | None = None  # optional (H, W) bool edit region at the image's size: skips step 1


@dataclass
class EditResult:
    id: str
    image: Image.Image  # the edit, RGB, at the input's original size
    mask_soft: Image.Image  # "L", 0..255, at the input's original size
    mask_binary: Image.Image  # "L", 0 or 255, at the input's original size (the mask step 3 used)
    mask_soft_latent: np.ndarray  # (h, w) float32 in [0, 1]
    mask_binary_latent: np.ndarray  # (h, w) bool
    mask_area: float  # fraction of the latent mask that is edited
    params: EditParams  # the effective parameters
    seed: int
    width: int  # the input's size
    height: int
    model_width: int  # the size the model worked at
    model_height: int
    input_latent: torch.Tensor  # (C, h, w) the clean input latent x_0, on the CPU
    latent: torch.Tensor  # (C, h, w) the edited latent y_0, on the CPU
    counters: dict[str, float] = field(default_factory=dict)  # evaluations and seconds per stage
    scores: dict[str, float | None] = field(default_factory=dict)  # diffedit.scores (empty: no Scoring)
    candidate: int = 0  # which candidate was kept (0: the plain edit, seeded ``seed``)
    candidate_seed: int = 0  # the seed the kept candidate was edited with
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every candidate: seed and scores


def stage_generator(seed: int, stage: str) -> torch.Generator:
    """A CPU generator for one stage of one row: seeded from sha256(f"{seed}:{stage}"), so the
    stages' streams are independent and each is the same on every device and batch."""
    digest = hashlib.sha256(f"{seed}:{stage}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") & MAX_SEED)


@dataclass
class _Row:
    index: int  # position in the caller's list
    request: EditRequest
    params: EditParams
    pixels: torch.Tensor  # (3, H', W') in [-1, 1] at the model's resolution
    size: tuple[int, int]  # original (width, height)
    model_size: tuple[int, int]  # (W', H')
    candidate: int = 0  # k of diffedit.select
    seed: int = 0  # the candidate's seed (candidate 0: the request's)
    digest: str = ""  # sha256 of ``pixels``: rows with equal digests share a source


class DiffEditor:
    """Holds a ``ModelBundle`` and edits rows with DiffEdit (see the module docstring)."""

    def __init__(
        self,
        bundle: ModelBundle,
        params: EditParams | None = None,
        max_batch: int = 16,
        cache_size: int = 4096,
        scoring: Scoring | None = None,
        selection: Selection | None = None,
        vae_batch: int | None = None,
        trajectory_cache: int = 32,
    ) -> None:
        """``scoring``: the scores to compute (None: none); ``selection``: best-of-K (None: K = 1).
        Selecting needs the scores it ranks by. ``vae_batch``: images per VAE encode/decode call
        (None: ``max_batch``); the VAE's activations at full resolution, not the UNet's, bound memory
        on large images (SDXL at 1024²), so it is set apart from ``max_batch``. ``trajectory_cache``: how
        many sources' clean latents and DDIM trajectories the editor keeps (LRU, on the model's device;
        SD 1.5 at 512², 40 steps: 2.7 MB each), so that rows sharing an image across calls share them
        too (0: none kept)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if vae_batch is not None and vae_batch < 1:
            raise ValueError(f"vae_batch must be >= 1, got {vae_batch}")
        if selection is not None and selection.candidates > 1:
            have = set(scoring.names) if scoring is not None else set()
            missing = sorted(set(selection.by) - have)
            if missing:
                raise ValueError(f"selection ranks by {missing}, which the scoring does not compute")
        self.bundle = bundle
        self.params = params or EditParams()
        self.max_batch = max_batch
        self.vae_batch = vae_batch or max_batch
        self.cache_size = cache_size
        self.scoring = scoring
        self.selection = selection or Selection()
        self.clip = None
        if scoring is not None and scoring.clip_model:
            from diffedit.clip import ClipScorer

            self.clip = ClipScorer(scoring.clip_model, device=bundle.device)
        self._embeddings: OrderedDict[str, torch.Tensor] = OrderedDict()  # prompt -> (L, D)
        # (image, encode settings) -> (x_0 (C, h, w), trajectory K+1 x (C, h, w)), on the model's device
        self.trajectory_cache = trajectory_cache
        self._trajectories: OrderedDict[tuple, tuple[torch.Tensor, list[torch.Tensor]]] = OrderedDict()

    # ------------------------------------------------------------------ validation
    def validate(self, request: EditRequest) -> None:
        """Raise ValueError (TypeError for wrong types) with a clear message if ``request`` is bad."""
        if not isinstance(request, EditRequest):
            raise TypeError(f"expected an EditRequest, got {type(request).__name__}")
        if not isinstance(request.query, str) or not request.query.strip():
            raise ValueError("query (the edit text) is empty")
        if not isinstance(request.caption, str):
            raise TypeError(f"caption must be a string, got {type(request.caption).__name__}")
        if isinstance(request.seed, bool) or not isinstance(request.seed, (int, np.integer)):
            raise TypeError(f"seed must be an integer, got {type(request.seed).__name__}")
        if not 0 <= int(request.seed) <= MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**63 - 1], got {request.seed}")
        if request.params is not None and not isinstance(request.params, EditParams):
            raise TypeError(f"params must be EditParams or None, got {type(request.params).__name__}")
        if not isinstance(request.image, Image.Image):
            raise TypeError(f"image must be a PIL image, got {type(request.image).__name__}")
        if request.image.width < 1 or request.image.height < 1:
            raise ValueError(f"image has zero size ({request.image.width}x{request.image.height})")
        if request.mask is not None:
            shape = (request.image.height, request.image.width)
            if np.asarray(request.mask).shape != shape:
                raise ValueError(
                    f"mask shape {np.asarray(request.mask).shape} != image (height, width) {shape}"
                )

    # ------------------------------------------------------------------ editing
    def edit(self, requests: Sequence[EditRequest]) -> list[EditResult]:
        """Edit every request; results in the same order. Raises if any request is invalid.
        With K candidates per row, each result is the row's best (``diffedit.select``)."""
        return [self._select(candidates) for candidates in self.edit_candidates(requests)]

    def edit_candidates(self, requests: Sequence[EditRequest]) -> list[list[EditResult]]:
        """Every candidate of every request, in candidate order (one each when K = 1); each
        candidate's counters are its own work and its share of the work it shares."""
        requests = list(requests)
        for i, request in enumerate(requests):
            try:
                self.validate(request)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"request {i} ({request.id or 'no id'}): {exc}") from None
        rows = [self._prepare(i, r) for i, r in enumerate(requests)]
        units = [unit for row in rows for unit in self._candidates(row)]
        buckets: dict[tuple, list[_Row]] = {}
        for row in units:
            key = (
                row.model_size,
                row.params.num_inference_steps,
                row.params.num_encode_steps,
                row.params.encode_method,
            )
            buckets.setdefault(key, []).append(row)
        per_row: list[list[EditResult]] = [[] for _ in rows]
        for bucket in buckets.values():
            for row, result in zip(bucket, self._edit_bucket(bucket), strict=True):
                per_row[row.index].append(result)
        return [sorted(c, key=lambda r: r.candidate) for c in per_row]

    def _candidates(self, row: _Row) -> list[_Row]:
        """The row's K candidates, each with its seed and parameters (one when K = 1, or when a given
        mask and DDIM inversion leave nothing random: every candidate would be the same edit)."""
        k = self.selection.candidates
        if (
            row.request.mask is not None
            and row.params.encode_method == "ddim"
            and not self.selection.variants
        ):
            k = 1
        seed, variants = int(row.request.seed), self.selection.variants
        return [
            replace(
                row,
                candidate=c,
                seed=candidate_seed(seed, c),
                params=candidate_params(row.params, variants, c),
            )
            for c in range(k)
        ]

    def _select(self, candidates: list[EditResult]) -> EditResult:
        """The best candidate (``diffedit.select``), carrying every candidate's seed and scores and the
        counters of all of them (the row's cost)."""
        best = candidates[choose([c.scores for c in candidates], self.selection.by)]
        counters: dict[str, float] = {}
        for c in candidates:
            for key, value in c.counters.items():
                counters[key] = counters.get(key, 0) + value
        listed = [
            {"candidate": c.candidate, "seed": c.candidate_seed, "scores": c.scores} for c in candidates
        ]
        return replace(best, counters=counters, candidates=listed)

    def edit_images(
        self,
        images: Sequence[Image.Image],
        queries: Sequence[str],
        captions: Sequence[str] | None = None,
        seeds: Sequence[int] | None = None,
        params: EditParams | None = None,
    ) -> list[EditResult]:
        """Convenience over ``edit``: parallel lists, one entry per image. Lengths must agree."""
        lengths = {"images": len(images), "queries": len(queries)}
        if captions is not None:
            lengths["captions"] = len(captions)
        if seeds is not None:
            lengths["seeds"] = len(seeds)
        if len(set(lengths.values())) != 1:
            raise ValueError(f"list lengths differ: {', '.join(f'{v} {k}' for k, v in lengths.items())}")
        n = len(images)
        requests = [
            EditRequest(
                image=images[i],
                query=queries[i],
                caption=captions[i] if captions is not None else "",
                seed=seeds[i] if seeds is not None else i,
                params=params,
            )
            for i in range(n)
        ]
        return self.edit(requests)

    def _prepare(self, index: int, request: EditRequest) -> _Row:
        image = to_rgb(request.image)
        b = self.bundle
        model_size = model_resolution(image.width, image.height, b.native_size, b.pixel_multiple)
        if model_size != image.size:
            image = image.resize(model_size, Image.Resampling.LANCZOS)
        pixels = pil_to_tensor(image)  # (3, H', W')
        return _Row(
            index=index,
            request=request,
            params=request.params or self.params,
            pixels=pixels,
            size=request.image.size,
            model_size=model_size,
            seed=int(request.seed),
            digest=hashlib.sha256(pixels.numpy().tobytes()).hexdigest(),
        )

    def _source_key(self, row: _Row) -> tuple:
        """What a row's clean latent and DDIM trajectory depend on: the model's input pixels, the size
        conditions (SDXL's original size), the grid and the encoding's text. Seed-free: the candidates of
        a request and the queries on one image share it. SDEdit's noise encode is per seed: its rows share
        only the VAE encode (key ``("noise", pixels)``), never a trajectory."""
        p = row.params
        if p.encode_method != "ddim":
            return ("noise", row.digest)
        text = row.request.caption if p.encode_conditioning == "caption" else ""
        return (row.digest, row.size, p.num_inference_steps, p.num_encode_steps, text)

    def _remember(self, key: tuple, x0: torch.Tensor, trajectory: list[torch.Tensor]) -> None:
        """Keep a source's x_0 and trajectory in the LRU (``trajectory_cache`` entries)."""
        if self.trajectory_cache <= 0:
            return
        self._trajectories[key] = (x0, trajectory)
        self._trajectories.move_to_end(key)
        while len(self._trajectories) > self.trajectory_cache:
            self._trajectories.popitem(last=False)

    def text_embeddings(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Embeddings of the unique ``prompts``, computed once each and cached (LRU).  # {p: (L, D)}"""
        unique = list(dict.fromkeys(prompts))
        missing = [p for p in unique if p not in self._embeddings]
        for chunk in _chunks(missing, self.max_batch):
            for prompt, emb in zip(chunk, self.bundle.encode_prompts(chunk), strict=True):
                self._embeddings[prompt] = emb
        out = {}
        for p in unique:
            self._embeddings.move_to_end(p)
            out[p] = self._embeddings[p]
        while len(self._embeddings) > self.cache_size:
            self._embeddings.popitem(last=False)
        return out

    @torch.inference_mode()
    def _edit_bucket(self, rows: list[_Row]) -> list[EditResult]:
        """Edit a bucket of candidate rows (``_Row.candidate``). Rows with the same image and encode
        settings (the candidates of a request; several queries on one image) share one VAE encode and,
        with DDIM inversion, one trajectory, computed once or found in the editor's LRU of trajectories;
        each row is charged its share of the evaluations."""
        b = self.bundle
        B = len(rows)
        device = b.device
        p0 = rows[0].params  # steps, encode steps and method are shared by the bucket
        seconds = {"vae": 0.0, "mask": 0.0, "encode": 0.0, "decode": 0.0, "score": 0.0}
        stages = ("mask", "encode", "decode", "score")
        evals = {stage: torch.zeros(B, dtype=torch.int64) for stage in stages}
        clock = _Clock(device)
        # The requests of the bucket: R of them, each row's request and each request's first row.
        requests = list(dict.fromkeys(r.index for r in rows))  # (R,) request indices
        req = torch.tensor([requests.index(r.index) for r in rows])  # (B,) row -> request
        first = torch.tensor([[r.index for r in rows].index(i) for i in requests])  # (R,) request -> row
        R = len(requests)
        # The sources of the bucket: U distinct (image, encode settings), each row's and each one's first.
        keys = [self._source_key(r) for r in rows]
        sources = list(dict.fromkeys(keys))  # (U,)
        src = torch.tensor([sources.index(k) for k in keys])  # (B,) row -> source
        src_first = [keys.index(k) for k in sources]  # (U,) source -> its first row
        sharers = torch.bincount(src, minlength=len(sources))  # (U,) rows per source
        U = len(sources)
        cached = {}  # u -> (x_0, trajectory) of the sources the LRU holds (each now most recent)
        for u, k in enumerate(sources):
            if k in self._trajectories:
                self._trajectories.move_to_end(k)
                cached[u] = self._trajectories[k]

        # VAE encode of each source not in the cache: the clean latents x_0.  # (U, C, h, w) -> (B, C, h, w)
        todo_src = [u for u in range(U) if u not in cached]
        x0_parts: dict[int, torch.Tensor] = {u: c[0] for u, c in cached.items()}
        if todo_src:
            pixels = torch.stack([rows[src_first[u]].pixels for u in todo_src])  # (U', 3, H, W)
            encoded = torch.cat([b.vae_encode(chunk) for chunk in pixels.split(self.vae_batch)], dim=0)
            x0_parts.update(zip(todo_src, encoded, strict=True))
        x0_src = torch.stack([x0_parts[u] for u in range(U)])  # (U, C, h, w)
        x0 = x0_src[src.to(device)]  # (B, C, h, w)
        seconds["vae"] += clock.lap()
        _, C, h, w = x0.shape

        prompts = [r.request.query for r in rows] + [r.request.caption for r in rows]
        prompts += [r.params.negative_prompt for r in rows] + [""]
        emb = self.text_embeddings(prompts)

        def stack(texts: list[str]) -> torch.Tensor:
            """Each row's text, with the row's own size conditions (SDXL).  # (B, L', D)"""
            per_prompt = torch.stack([emb[t] for t in texts]).to(device)  # (B, L', D)
            return b.condition_rows(per_prompt, [r.size for r in rows], [r.model_size for r in rows])

        emb_query = stack([r.request.query for r in rows])  # (B, L', D)
        emb_caption = stack([r.request.caption for r in rows])  # (B, L', D)
        emb_negative = stack([r.params.negative_prompt for r in rows])  # (B, L', D)
        emb_empty = stack([""] * B)  # (B, L', D)
        levels = b.levels(p0.num_inference_steps, (h, w))  # S + 1 levels: the clean state, tau_1..tau_S
        enc_levels = levels.upto(p0.num_encode_steps)  # K + 1 levels

        # Step 1: masks, for the rows that were not given one (each candidate its own draws).  # (B, h, w)
        soft = torch.zeros(B, h, w, dtype=x0.dtype)
        binary = torch.zeros(B, h, w, dtype=torch.bool)
        todo = [i for i, r in enumerate(rows) if r.request.mask is None]
        for i, r in enumerate(rows):
            if r.request.mask is not None:
                binary[i] = _given_mask_to_latent(r.request.mask, (h, w))
                soft[i] = binary[i].float()
        if todo:
            idx = torch.tensor(todo)
            noises = []
            for i in todo:
                gen = stage_generator(rows[i].seed, "mask")
                noises.append(torch.randn((rows[i].params.num_mask_draws, C, h, w), generator=gen))
            k_mask = torch.tensor([mask_level(levels, rows[i].params.mask_strength) for i in todo])
            t_mask, alpha_mask, sigma_mask = levels.at(k_mask)  # (M,) each
            evals_mask = torch.zeros(len(todo), dtype=torch.int64)
            maps = diffedit_mask(
                b.denoise,
                x0[idx.to(device)],
                noises,
                t_mask,
                alpha_mask.to(device),
                sigma_mask.to(device),
                emb_query[idx.to(device)],
                emb_caption[idx.to(device)],
                clip_quantile=torch.tensor([rows[i].params.mask_clip_quantile for i in todo]),
                smoothing=torch.tensor([rows[i].params.mask_smoothing for i in todo]),
                threshold=torch.tensor([rows[i].params.mask_threshold for i in todo]),
                max_batch=self.max_batch,
                evals=evals_mask,
                emb_empty=emb_empty[idx.to(device)],
                union=torch.tensor([rows[i].params.mask_cover == "union" for i in todo]),
                union_threshold=torch.tensor([rows[i].params.mask_union_threshold for i in todo]),
                closing=torch.tensor([rows[i].params.mask_closing for i in todo]),
                holes=torch.tensor([rows[i].params.mask_fill_holes for i in todo]),
                dilation=torch.tensor([rows[i].params.mask_dilation for i in todo]),
            )
            soft[idx] = maps.soft.cpu()
            binary[idx] = maps.binary.cpu()
            evals["mask"][idx] = evals_mask
        seconds["mask"] += clock.lap()

        # Step 2: encode to tau_K, keeping every timestep's latent.  # K+1 x (B, C, h, w)
        if p0.encode_method == "ddim":
            # DDIM inversion does not depend on the seed: once per source (or none: cached), shared by
            # the source's rows, each charged its share.
            parts: dict[int, list[torch.Tensor]] = {u: c[1] for u, c in cached.items()}
            if todo_src:
                j = [src_first[u] for u in todo_src]
                emb_encode = torch.stack(
                    [
                        emb_caption[i] if rows[i].params.encode_conditioning == "caption" else emb_empty[i]
                        for i in j
                    ]
                )  # (U', L', D)
                evals_encode = torch.zeros(len(todo_src), dtype=torch.int64)
                computed = ddim_encode(
                    b.denoise,
                    x0_src[torch.tensor(todo_src, device=device)],
                    enc_levels,
                    emb_encode,
                    max_batch=self.max_batch,
                    evals=evals_encode,
                )  # K+1 x (U', C, h, w)
                for n, u in enumerate(todo_src):
                    parts[u] = [x[n] for x in computed]  # K+1 x (C, h, w)
                    self._remember(sources[u], x0_src[u], parts[u])
                    evals["encode"][src == u] = _shares(int(evals_encode[n]), int(sharers[u]))
            src_dev = src.to(device)
            trajectory = [
                torch.stack([parts[u][k] for u in range(U)])[src_dev] for k in range(len(enc_levels))
            ]  # K+1 x (U, C, h, w) -> K+1 x (B, C, h, w)
        else:
            noise = torch.stack(
                [torch.randn((C, h, w), generator=stage_generator(r.seed, "encode")) for r in rows]
            )  # (B, C, h, w)
            trajectory = noise_encode(x0, noise, enc_levels)
        seconds["encode"] += clock.lap()

        # Step 3: decode with mask guidance.  # (B, C, h, w)
        y0 = ddim_decode(
            b.denoise,
            trajectory,
            binary.unsqueeze(1).to(device, x0.dtype),  # (B, 1, h, w)
            enc_levels,
            emb_query,
            emb_negative,
            torch.tensor([r.params.guidance_scale for r in rows], dtype=x0.dtype),
            max_batch=self.max_batch,
            evals=evals["decode"],
        )
        seconds["decode"] += clock.lap()

        # VAE decode.  # (B, 3, H, W)
        images = torch.cat([b.vae_decode(chunk) for chunk in y0.split(self.vae_batch)], dim=0)
        seconds["vae"] += clock.lap()

        # Text alignment (diffedit.scores): E_Q, E_R of each request's input once and of every candidate's
        # edit, on the request's own draws.  # (B, 2, h, w) each
        errors_input = errors_edit = None
        sc = self.scoring
        if sc is not None and sc.alignment:
            draws = sc.alignment_draws
            k_align = torch.tensor(
                [mask_level(levels, s) for s in sc.alignment_strengths for _ in range(draws)]
            )  # (J K,)
            t_align, alpha_align, sigma_align = levels.at(k_align)  # (J K,) each
            score_noise = torch.stack(
                [
                    torch.randn((len(t_align), C, h, w), generator=stage_generator(rows[j].seed, "score"))
                    for j in first.tolist()
                ]
            )  # (R, J K, C, h, w)
            errors = alignment_errors(
                b.denoise,
                torch.cat([x0[first.to(device)], y0]),  # (R + B, C, h, w)
                torch.cat([score_noise, score_noise[req]]),  # (R + B, J K, C, h, w)
                t_align,
                alpha_align,
                sigma_align,
                torch.cat([emb_query[first.to(device)], emb_query]),
                torch.cat([emb_caption[first.to(device)], emb_caption]),
                max_batch=self.max_batch,
                owners=torch.cat([first, torch.arange(B)]),
                evals=evals["score"],
            ).cpu()  # (R + B, 2, h, w)
            errors_input, errors_edit = errors[:R][req], errors[R:]  # (B, 2, h, w) each
            seconds["score"] += clock.lap()

        edits, masks, row_scores = [], [], []
        # One device-to-host copy each for the whole bucket (not one synchronising copy per row).
        images = images.cpu()  # (B, 3, H, W)
        x0_host, y0_host = x0.cpu(), y0.cpu()  # (B, C, h, w) each
        for i, r in enumerate(rows):
            edited = tensor_to_pil(images[i])
            if edited.size != r.size:
                edited = edited.resize(r.size, Image.Resampling.LANCZOS)
            if r.params.paste_background:
                edited = paste_background(edited, to_rgb(r.request.image), binary[i])
            mask_binary = map_to_pil(binary[i], r.size, binary=True)
            scores: dict[str, float | None] = {}
            if sc is not None:
                clock.lap()  # the conversions above are no stage's time
                if sc.preservation:
                    scores["psnr"], scores["ssim"] = preservation(
                        edited, to_rgb(r.request.image), mask_binary, device
                    )
                if sc.mask:
                    scores["mask_components"], scores["mask_largest"] = mask_statistics(binary[i])
                if errors_edit is not None and errors_input is not None:
                    scores["alignment"] = alignment_score(errors_edit[i], errors_input[i], binary[i])
                seconds["score"] += clock.lap()
            edits.append(edited)
            masks.append(mask_binary)
            row_scores.append(scores)
        if self.clip is not None:  # diffedit.clip: one image forward per edit and per input
            clock.lap()
            clip_scores = self.clip.score(
                [to_rgb(r.request.image) for r in rows],
                edits,
                [r.request.caption for r in rows],
                [r.request.query for r in rows],
            )
            for scores, extra in zip(row_scores, clip_scores, strict=True):
                scores.update(extra)
            seconds["score"] += clock.lap()

        results = []
        for i, r in enumerate(rows):
            shared = (
                i in src_first and src_first.index(i) in todo_src
            )  # the row that ran its source's VAE encode
            counters: dict[str, float] = {
                "unet_evals": int(sum(int(e[i]) for e in evals.values())),
                **{f"unet_evals_{stage}": int(evals[stage][i]) for stage in stages},
                "vae_encodes": int(shared),
                "vae_decodes": 1,
            }
            for stage in stages:
                total = int(evals[stage].sum())
                share = int(evals[stage][i]) / total if total else 1.0 / B
                counters[f"seconds_{stage}"] = seconds[stage] * share
            counters["seconds_vae"] = seconds["vae"] / B
            counters["seconds_total"] = sum(
                counters[f"seconds_{s}"] for s in ("mask", "encode", "decode", "score", "vae")
            )
            results.append(
                EditResult(
                    id=r.request.id,
                    image=edits[i],
                    mask_soft=map_to_pil(soft[i], r.size, binary=False),
                    mask_binary=masks[i],
                    mask_soft_latent=soft[i].numpy().astype(np.float32),
                    mask_binary_latent=binary[i].numpy().copy(),
                    mask_area=float(binary[i].float().mean()),
                    params=r.params,
                    seed=int(r.request.seed),
                    width=r.size[0],
                    height=r.size[1],
                    model_width=r.model_size[0],
                    model_height=r.model_size[1],
                    input_latent=x0_host[i],
                    latent=y0_host[i],
                    counters=counters,
                    scores=row_scores[i],
                    candidate=r.candidate,
                    candidate_seed=r.seed,
                )
            )
        return results


def paste_background(edited: Image.Image, original: Image.Image, binary_latent: torch.Tensor) -> Image.Image:
    """``edited`` inside the mask, ``original``'s own pixels outside it.

    The (h, w) latent mask is upsampled bilinearly to the image size, which feathers its edge over
    about one latent pixel; outside that band the result is the input, bit for bit.
    """
    m = torch.nn.functional.interpolate(
        binary_latent.float()[None, None],
        size=(edited.height, edited.width),
        mode="bilinear",
        align_corners=False,
    )[0, 0, :, :, None].numpy()  # (H, W, 1)
    a, b = np.asarray(edited, np.float32), np.asarray(original, np.float32)  # (H, W, 3)
    return Image.fromarray(np.round(m * a + (1 - m) * b).astype(np.uint8), "RGB")


def _given_mask_to_latent(mask: np.ndarray, latent_hw: tuple[int, int]) -> torch.Tensor:
    """An (H, W) image-resolution mask -> (h, w) bool: a latent pixel is in the edit region when any
    image pixel it covers is (after resizing the mask to the latent grid with a box filter)."""
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]  # (1, 1, H, W)
    small = torch.nn.functional.interpolate(m, size=latent_hw, mode="area")  # (1, 1, h, w)
    return small[0, 0] > 0


def _shares(total: int, n: int) -> torch.Tensor:
    """``total`` evaluations split over n rows as evenly as integers allow (the first rows take the
    remainder), summing to ``total`` exactly.  # (n,) int64"""
    return torch.full((n,), total // n, dtype=torch.int64) + (torch.arange(n) < total % n).to(torch.int64)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Clock:
    """Wall-clock laps that wait for queued CUDA work, so a stage is charged its own time."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.last = time.perf_counter()

    def lap(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed
