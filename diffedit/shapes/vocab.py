"""The words of the synthetic shapes world, and the CLIP tokenizer built for them.

Every word a caption can contain is one token of ``build_shapes_tokenizer()``, so the text encoder
sees one embedding per word. Colours are RGB triples in 0..255; object colours are saturated hues
and background colours are achromatic, so an object pixel is told from the background by its chroma.
"""

from __future__ import annotations

from typing import Any

from diffedit.tiny import build_word_tokenizer

#: Named object colours (RGB, 0..255): saturated, pairwise far apart.
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "orange": (240, 130, 30),
    "purple": (140, 60, 190),
}

#: Named background colours (RGB, 0..255): achromatic, textures vary brightness around them.
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "white": (215, 215, 215),
    "black": (45, 45, 45),
}

#: Object shapes.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")

#: Background textures, as the caption names them ("on a grey striped background").
TEXTURES: tuple[str, ...] = ("gradient", "striped", "cloudy")

#: Function words of the captions.
FUNCTION_WORDS: tuple[str, ...] = ("a", "an", "and", "on", "background")

#: Longest caption: 3 objects x 3 words + 2 "and" + "on a <colour> <texture> background" = 16
#: words, plus the start and end tokens; 24 leaves room for hand-written prompts.
MODEL_MAX_LENGTH = 24

#: Every word a caption can contain, in a fixed order (the tokenizer's vocabulary is built from it).
VOCABULARY: tuple[str, ...] = (
    *FUNCTION_WORDS,
    *OBJECT_COLOURS,
    *BACKGROUND_COLOURS,
    *SHAPES,
    *TEXTURES,
)


def build_shapes_tokenizer(model_max_length: int = MODEL_MAX_LENGTH) -> Any:
    """A ``CLIPTokenizer`` holding each word of ``VOCABULARY`` as one token."""
    return build_word_tokenizer(VOCABULARY, model_max_length=model_max_length)
