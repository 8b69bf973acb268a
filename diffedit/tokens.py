"""Does an edit's text reach the model? Token-level checks of a (query, caption) pair.

The text encoder sees at most ``tokenizer.model_max_length`` tokens (77 for Stable Diffusion's CLIP, 24
for the shapes models); the rest of a prompt is cut off. When the query and the caption tokenize to the same
ids after that cut (the changed word lies beyond the limit), both embed identically: the mask is empty
and the "edit" reproduces the input. ``check_prompts`` says so, and which prompts were cut, for every
tokenizer of a model (SD has one; SDXL and FLUX.1 two, SD3 three with its T5; an edit is a no-op only if
it is one for every tokenizer).

Only tokenizer files are needed (``load_tokenizers``): cheap enough for ``validate``, which never loads
weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Model subfolders that hold tokenizers, in the order the text encoders use them.
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2", "tokenizer_3")


@dataclass(frozen=True)
class PromptCheck:
    """What the text encoders will see of one (query, caption) pair."""

    unchanged: bool  # query and caption are the same token ids after truncation, for every tokenizer
    truncated: tuple[str, ...]  # "query" and/or "caption": cut at the tokenizer's max length
    max_length: int  # the smallest max length of the tokenizers

    def warnings(self) -> list[str]:
        """Human-readable warnings, each starting with a stable code (``unchanged:``, ``truncated:``)."""
        out = []
        if self.unchanged:
            out.append(
                f"unchanged: query and caption are the same after truncation to {self.max_length} tokens "
                "(the edit is a no-op)"
            )
        if self.truncated:
            out.append(f"truncated: {' and '.join(self.truncated)} cut at {self.max_length} tokens")
        return out


def _ids(tokenizer: Any, text: str, truncate: bool) -> list[int]:
    kwargs = (
        {"truncation": True, "max_length": tokenizer.model_max_length} if truncate else {"verbose": False}
    )
    return list(tokenizer(text, **kwargs)["input_ids"])


def is_truncated(tokenizer: Any, text: str, max_length: int | None = None) -> bool:
    """Whether the encoder sees ``text`` cut at ``max_length`` tokens (the tokenizer's own by default),
    special tokens included."""
    return len(_ids(tokenizer, text, False)) > (max_length or tokenizer.model_max_length)


def check_prompts(tokenizers: Sequence[Any], query: str, caption: str) -> PromptCheck:
    """Tokenize ``query`` and ``caption`` with each of ``tokenizers`` (Hugging Face tokenizers) as the
    text encoders will, and compare (module docstring). No tokenizers: nothing is known, nothing flagged."""
    if not tokenizers:
        return PromptCheck(unchanged=False, truncated=(), max_length=0)
    unchanged = True  # until a tokenizer tells them apart
    truncated: list[str] = []
    for tokenizer in tokenizers:
        q, c = _ids(tokenizer, query, True), _ids(tokenizer, caption, True)
        unchanged = unchanged and q == c
        limit = tokenizer.model_max_length
        for name, text in (("query", query), ("caption", caption)):
            if name not in truncated and is_truncated(tokenizer, text, limit):
                truncated.append(name)
    return PromptCheck(
        unchanged=unchanged,
        truncated=tuple(truncated),
        max_length=min(int(t.model_max_length) for t in tokenizers),
    )


def bundle_tokenizers(bundle: Any) -> list[Any]:
    """The tokenizers of a loaded model bundle (``tokenizer``, then ``tokenizer_2`` and ``tokenizer_3``
    where there are)."""
    return [t for t in (getattr(bundle, name, None) for name in TOKENIZER_FOLDERS) if t is not None]


def load_tokenizers(root: str | Path) -> list[Any]:
    """The tokenizers of a diffusers model directory, from their files alone (no weights), each of the
    class its model_index.json names (CLIP's, or SD3's and FLUX.1's T5 tokenizer); CLIPTokenizer where it
    names none."""
    import json

    import transformers

    root = Path(root)
    index_file = root / "model_index.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    out = []
    for name in TOKENIZER_FOLDERS:
        if not (root / name).is_dir():
            continue
        entry = index.get(name)
        named = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] else None
        cls = getattr(transformers, named or "CLIPTokenizer")
        out.append(cls.from_pretrained(str(root / name), local_files_only=True))
    return out


__all__ = [
    "TOKENIZER_FOLDERS",
    "PromptCheck",
    "bundle_tokenizers",
    "check_prompts",
    "is_truncated",
    "load_tokenizers",
]
