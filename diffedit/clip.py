"""CLIP scores of an edit: InstructPix2Pix's four similarities (Brooks et al. 2023, §3.1.2), from a
transformers CLIP model that is already on disk (never downloaded: ``local_files_only``).

With I(.) the model's normalised image embedding and T(.) its normalised text embedding:

    score_clip_text      = cos(I(edit), T(Q))                          the edit shows the query
    score_clip_caption   = cos(I(input), T(R))                         the input shows the caption
    score_clip_direction = cos(I(edit) - I(input), T(Q) - T(R))        the change follows the text change
    score_clip_image     = cos(I(input), I(edit))                      the edit is still the input's picture

Each in [-1, 1]. InstructPix2Pix keeps a pair when text-image >= 0.2 on both images, direction >= 0.2
and image-image >= 0.7 (for CLIP ViT-L/14; other CLIP models need their own bounds). Texts longer
than the text encoder's limit are truncated (the editor's ``warning`` column reports truncation of
the diffusion model's own encoder). Cost: two image forwards per candidate (its edit and the input)
and one text forward per unique text of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

#: The score names this module adds (columns ``score_<name>``).
CLIP_SCORE_NAMES = ("clip_text", "clip_caption", "clip_direction", "clip_image")
HUB_SCHEME = "hf://"


class ClipModelError(ValueError):
    """The CLIP model is not on disk, or is not a transformers CLIP model."""


def resolve_clip_model(source: str) -> Path:
    """A local directory for ``source``: the directory itself, or for ``hf://org/name`` the snapshot in
    the local Hugging Face cache. Never downloads; ``ClipModelError`` when it is not there."""
    if source.startswith(HUB_SCHEME):
        from huggingface_hub import snapshot_download

        repo = source[len(HUB_SCHEME) :]
        try:
            path = Path(snapshot_download(repo, local_files_only=True))
        except Exception as exc:  # LocalEntryNotFoundError, RepositoryNotFoundError, ...
            raise ClipModelError(
                f"CLIP model {source} is not in the local Hugging Face cache (it is never downloaded at "
                f"run time: fetch it beforehand, e.g. `hf download {repo}`): {type(exc).__name__}"
            ) from None
    else:
        path = Path(source)
    if not path.is_dir():
        raise ClipModelError(f"CLIP model {source}: no such directory")
    if not (path / "config.json").is_file():
        raise ClipModelError(f"CLIP model {source}: no config.json (not a transformers model directory)")
    return path


class ClipScorer:
    """A resident CLIP model, its tokenizer and image processor; ``score`` rows of an edit batch."""

    def __init__(self, source: str, device: torch.device | str = "cpu") -> None:
        from transformers import AutoTokenizer, CLIPModel

        try:  # transformers >= 5: the PIL processor (the default one needs torchvision)
            from transformers import CLIPImageProcessorPil as CLIPImageProcessor
        except ImportError:
            from transformers import CLIPImageProcessor

        path = resolve_clip_model(source)
        try:
            self.model = CLIPModel.from_pretrained(path, local_files_only=True).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise ClipModelError(f"CLIP model {source}: cannot load it: {exc}") from None
        self.device = torch.device(device)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    @staticmethod
    def _features(output: object) -> torch.Tensor:
        """transformers 4 returns the projected features, 5 an output whose ``pooler_output`` they are."""
        features = output if isinstance(output, torch.Tensor) else output.pooler_output  # type: ignore[attr-defined]
        return torch.nn.functional.normalize(features.float(), dim=-1)  # (N, P)

    @torch.inference_mode()
    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised text embeddings.  # (N, P)"""
        tokens = self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        ).to(self.device)
        return self._features(self.model.get_text_features(**tokens))

    @torch.inference_mode()
    def images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Normalised image embeddings.  # (N, P)"""
        pixels = self.processor(images=[i.convert("RGB") for i in images], return_tensors="pt")[
            "pixel_values"
        ]
        return self._features(self.model.get_image_features(pixel_values=pixels.to(self.device)))

    def score(
        self,
        inputs: Sequence[Image.Image],
        edits: Sequence[Image.Image],
        captions: Sequence[str],
        queries: Sequence[str],
    ) -> list[dict[str, float]]:
        """The four scores of each (input, edit, caption R, query Q) (module docstring)."""
        unique = list(dict.fromkeys([*captions, *queries]))
        emb = dict(zip(unique, self.texts(unique), strict=True))  # text -> (P,)
        i_in, i_ed = self.images(inputs), self.images(edits)  # (N, P) each
        t_r = torch.stack([emb[c] for c in captions])  # (N, P)
        t_q = torch.stack([emb[q] for q in queries])  # (N, P)
        cos = torch.nn.functional.cosine_similarity
        text = (i_ed * t_q).sum(-1)  # (N,)
        caption = (i_in * t_r).sum(-1)  # (N,)
        direction = cos(i_ed - i_in, t_q - t_r, dim=-1, eps=1e-8)  # (N,); 0 where either change is 0
        image = (i_in * i_ed).sum(-1)  # (N,)
        return [
            {
                "clip_text": float(a),
                "clip_caption": float(b),
                "clip_direction": float(c),
                "clip_image": float(d),
            }
            for a, b, c, d in zip(text, caption, direction, image, strict=True)
        ]


def clip_fingerprint(source: str) -> str:
    """sha256 over the CLIP model's files (``diffedit.loading.weights_sha256``, remembered in a sidecar):
    what the results identity records, never the path."""
    from diffedit.loading.hashing import HASH_SIDECAR_NAME, weights_sha256

    root = resolve_clip_model(source)
    files = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*"))
             if p.is_file() and p.name != HASH_SIDECAR_NAME and not p.name.startswith(".")]  # fmt: skip
    return weights_sha256(root, files)


def save_tiny_clip(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random transformers CLIP model (tokenizer, image processor, weights) to ``path``:
    the model the tests score with, offline. Not a real CLIP: its scores mean nothing."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig

    from diffedit.tiny import TINY_WORDS, build_word_tokenizer, tiny_text_config

    path = Path(path)
    tokenizer = build_word_tokenizer(TINY_WORDS, model_max_length=16)
    text = tiny_text_config(tokenizer, width=32, projection_dim=16)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                              image_size=32, patch_size=8, projection_dim=16)  # fmt: skip
    torch.manual_seed(seed)
    model = CLIPModel(
        CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        path
    )
    return path
