"""The layout of a diffusers model directory, checked from its file list and small JSON files only.

Four families are known (``FAMILIES``), told apart by ``model_index.json``:

* ``"sd"``: Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline``): ``unet/``, ``vae/``,
  ``text_encoder/`` (CLIPTextModel), ``tokenizer/``, ``scheduler/``;
* ``"sdxl"``: Stable Diffusion XL (``StableDiffusionXLPipeline``): the same plus ``text_encoder_2/``
  (CLIPTextModelWithProjection, whose projected pooled output is the UNet's ``text_embeds``) and
  ``tokenizer_2/``; its UNet has ``addition_embed_type="text_time"``;
* ``"sd3"``: Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``): ``transformer/``
  (SD3Transformer2DModel), ``vae/``, CLIP-L and CLIP-G in ``text_encoder/``, ``text_encoder_2/`` (both
  CLIPTextModelWithProjection) with their tokenizers, the optional T5 in ``text_encoder_3/`` +
  ``tokenizer_3/``, a flow-matching ``scheduler/``;
* ``"flux"``: FLUX.1 dev / schnell (``FluxPipeline``): ``transformer/`` (FluxTransformer2DModel),
  ``vae/``, CLIP-L in ``text_encoder/`` (CLIPTextModel), T5 in ``text_encoder_2/``, both tokenizers,
  a flow-matching ``scheduler/``.

Both are checked the same way, before anything heavy is read: every component listed and present, each
config file there, the tokenizer files, safetensors weights (pickle-only components are refused with
``UnsafeWeightsError``; nothing here ever unpickles), and a UNet DiffEdit can drive (text-to-image, with
the added conditions its family provides). ``check_layout`` lists every problem at once.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
from collections.abc import Callable, Collection, Mapping
from typing import Any

from diffedit.loading.errors import ModelLayoutError, UnsafeWeightsError

__all__ = [
    "FAMILIES",
    "FILE_PATTERNS",
    "FLOW_SCHEDULER_CLASS",
    "PICKLE_SUFFIXES",
    "check_layout",
    "layout_family",
    "layout_name",
    "names_flow_scheduler",
    "wanted",
]

#: The subfolders each family's directory must have, as named in model_index.json.
FAMILIES: dict[str, tuple[str, ...]] = {
    "sd": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    "sd3": ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    "flux": ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
}
#: Components a family may have (checked like the others when model_index.json lists them).
OPTIONAL: dict[str, tuple[str, ...]] = {"sd3": ("text_encoder_3", "tokenizer_3")}
#: FluxPipeline's default_sample_size: FLUX.1's native latent side (x the VAE stride = 1024 px); a
#: directory's model_index.json may say otherwise ("default_sample_size", as diffedit.tiny writes).
FLUX_SAMPLE_SIZE = 128
#: Each family's name in reports.
FAMILY_NAMES = {
    "sd": "Stable Diffusion",
    "sdxl": "Stable Diffusion XL",
    "sd3": "Stable Diffusion 3",
    "flux": "FLUX.1",
}
#: The scheduler a rectified-flow model names (``diffedit.schedule.flow_levels`` reads its sigmas); a UNet
#: directory ("sd", "sdxl") that names it holds a flow-trained UNet (``diffedit.bundle``: a velocity on
#: the flow grid).
FLOW_SCHEDULER_CLASS = "FlowMatchEulerDiscreteScheduler"
#: The class the model_index.json entry of a component must name, where only one will do.
REQUIRED_CLASSES = {
    ("sdxl", "text_encoder_2"): "CLIPTextModelWithProjection",
    ("sd3", "transformer"): "SD3Transformer2DModel",
    ("sd3", "text_encoder"): "CLIPTextModelWithProjection",
    ("sd3", "text_encoder_2"): "CLIPTextModelWithProjection",
    ("sd3", "text_encoder_3"): "T5EncoderModel",
    ("flux", "transformer"): "FluxTransformer2DModel",
    ("flux", "text_encoder_2"): "T5EncoderModel",
    ("sd3", "scheduler"): FLOW_SCHEDULER_CLASS,
    ("flux", "scheduler"): FLOW_SCHEDULER_CLASS,
}
#: The config file of each component (tokenizers are checked separately).
CONFIG_FILES = {
    "unet": "config.json",
    "transformer": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "text_encoder_2": "config.json",
    "text_encoder_3": "config.json",
    "scheduler": "scheduler_config.json",
}
TOKENIZERS = ("tokenizer", "tokenizer_2", "tokenizer_3")
#: Weight file stems: diffusers saves ``<stem>.safetensors`` or shards ``<stem>-0000i-of-0000n.safetensors``
#: with ``<stem>.safetensors.index.json``; transformers the same with stem ``model``.
WEIGHT_STEMS = {
    "unet": "diffusion_pytorch_model",
    "transformer": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
    "text_encoder_2": "model",
    "text_encoder_3": "model",
}
#: The files a load needs, for either family (fnmatch patterns over paths relative to the model root):
#: configs and tokenizer files, and the non-variant safetensors weights. Pickle weights and variants
#: (``.fp16.safetensors``) never match.
FILE_PATTERNS: tuple[str, ...] = (
    "model_index.json",
    *(
        f"{component}/*.json"
        for component in (*FAMILIES["sdxl"], "transformer", "text_encoder_3", "tokenizer_3")
    ),
    *(f"{tokenizer}/*.txt" for tokenizer in TOKENIZERS),
    *(f"{tokenizer}/*.model" for tokenizer in TOKENIZERS),  # sentencepiece (T5's spiece.model)
    *(f"{component}/{stem}.safetensors" for component, stem in WEIGHT_STEMS.items()),
    *(f"{component}/{stem}-*.safetensors" for component, stem in WEIGHT_STEMS.items()),
)
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")


def layout_family(index: Mapping[str, Any]) -> str:
    """The family model_index.json describes: ``"sd3"`` / ``"flux"`` by the pipeline or the transformer it
    names; ``"sdxl"`` when it lists a second text encoder or names an SDXL pipeline; else ``"sd"``."""
    pipeline = str(index.get("_class_name", ""))
    transformer = index.get("transformer")
    transformer = transformer[1] if isinstance(transformer, (list, tuple)) and len(transformer) == 2 else None
    if pipeline.startswith("StableDiffusion3") or transformer == "SD3Transformer2DModel":
        return "sd3"
    if pipeline.startswith("Flux") or transformer == "FluxTransformer2DModel":
        return "flux"
    entry = index.get("text_encoder_2")
    listed = isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None
    return "sdxl" if listed or pipeline.startswith("StableDiffusionXL") else "sd"


def names_flow_scheduler(index: Mapping[str, Any]) -> bool:
    """Whether model_index.json's scheduler is the rectified-flow one (``FLOW_SCHEDULER_CLASS``)."""
    return listed(index, "scheduler") and index["scheduler"][1] == FLOW_SCHEDULER_CLASS


def layout_name(index: Mapping[str, Any]) -> str:
    """The family's name in reports (``FAMILY_NAMES``), with ", rectified-flow UNet" for a UNet directory
    whose scheduler is the flow one."""
    family = layout_family(index)
    flow_unet = family in ("sd", "sdxl") and names_flow_scheduler(index)
    return FAMILY_NAMES[family] + (", rectified-flow UNet" if flow_unet else "")


def listed(index: Mapping[str, Any], component: str) -> bool:
    """Whether model_index.json lists ``component`` with a class (not ``[null, null]``)."""
    entry = index.get(component)
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None


def check_layout(
    files: Collection[str], read_json: Callable[[str], Any], where: str
) -> dict[str, tuple[str, ...]]:
    """Check a diffusers SD or SDXL layout from its file list, before anything heavy is read.

    ``files``: every file's path relative to the model root, posix-style ("unet/config.json").
    ``read_json(rel)``: the parsed content of one of them (only small JSON files are asked for).
    ``where``: how errors name the directory.

    Steps: 1. model_index.json, and the family it describes (``layout_family``); 2. each of the family's
    components: its model_index entry, its folder, its config file or tokenizer files, its safetensors
    weights; 3. the UNet's config (``check_unet_config``). Returns the safetensors files each weighted
    component loads. Raises ``UnsafeWeightsError`` when a component has only pickle checkpoints, else
    ``ModelLayoutError`` listing every problem.
    """
    files = set(files)
    if "model_index.json" not in files:
        raise ModelLayoutError(
            where, ["model_index.json missing (not a diffusers Stable Diffusion directory)"]
        )
    index = _read_json_checked(read_json, "model_index.json", where)
    if not isinstance(index, dict):
        raise ModelLayoutError(where, ["model_index.json is not a JSON object"])
    family = layout_family(index)

    problems: list[str] = []
    unsafe: list[str] = []
    weights: dict[str, tuple[str, ...]] = {}
    optional = tuple(c for c in OPTIONAL.get(family, ()) if listed(index, c))
    for component in (*FAMILIES[family], *optional):
        entry = index.get(component)
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[1] is None:
            problems.append(f"model_index.json has no {component!r} entry" + _family_hint(family, component))
        elif (family, component) in REQUIRED_CLASSES and entry[1] != REQUIRED_CLASSES[family, component]:
            problems.append(
                f"model_index.json: {component} is {entry[1]}, expected "
                f"{REQUIRED_CLASSES[family, component]}"
                + (" (its projected pooled output conditions the UNet)" if family == "sdxl" else "")
            )
        config = CONFIG_FILES.get(component, "tokenizer.json")
        if not any(rel.startswith(f"{component}/") for rel in files):
            problems.append(f"{component}/ missing or empty (needs {component}/{config})")
            continue
        if component in CONFIG_FILES and f"{component}/{config}" not in files:
            problems.append(f"{component}/{config} missing")
        if component in TOKENIZERS and not (
            f"{component}/tokenizer.json" in files
            or {f"{component}/vocab.json", f"{component}/merges.txt"} <= files
        ):
            problems.append(f"{component}/ has neither tokenizer.json nor vocab.json + merges.txt")
        if component in WEIGHT_STEMS:
            found = _weight_files(component, files, read_json, where, problems, unsafe)
            if found:
                weights[component] = found
    if unsafe:
        raise UnsafeWeightsError(
            f"{where}: pickle checkpoints are refused (loading them can execute arbitrary code), and "
            + "; ".join(unsafe)
            + ". Convert them to safetensors in a trusted environment, e.g. "
            "Model.from_pretrained(dir, use_safetensors=False).save_pretrained(dir, safe_serialization=True), "
            "or use a repository that ships *.safetensors"
        )
    if family in ("sd", "sdxl") and "unet/config.json" in files:
        unet_config = _read_json_checked(read_json, "unet/config.json", where)
        problems.extend(unet_config_problems(unet_config if isinstance(unet_config, dict) else {}, family))
    if problems:
        raise ModelLayoutError(where, problems)
    return weights


def unet_config_problems(config: Mapping[str, Any], family: str) -> list[str]:
    """Why DiffEdit cannot drive this UNet in a ``family`` directory ([] when it can): extra input channels
    (inpainting, depth), or added conditions other than the family's (none for SD, "text_time" for SDXL)."""
    problems = []
    if config.get("in_channels") != config.get("out_channels"):
        problems.append(
            f"unet/config.json has in_channels={config.get('in_channels')} but "
            f"out_channels={config.get('out_channels')}: an inpainting/depth UNet, not a text-to-image one"
        )
    added = config.get("addition_embed_type")
    expected = "text_time" if family == "sdxl" else None
    if added != expected:
        what = (
            "an SDXL directory needs addition_embed_type='text_time' (pooled text and size conditions)"
            if family == "sdxl"
            else "added conditions need an SDXL directory (text_encoder_2 and tokenizer_2 in model_index.json)"
        )
        problems.append(f"unet/config.json has addition_embed_type={added!r}: {what}")
    if config.get("time_cond_proj_dim") is not None:
        problems.append(
            "unet/config.json has time_cond_proj_dim (a guidance-distilled UNet, e.g. LCM): not supported"
        )
    return problems


def _family_hint(family: str, component: str) -> str:
    if family == "sdxl" and component in ("text_encoder", "tokenizer"):
        return " (an SDXL refiner? DiffEdit needs a base model with both text encoders)"
    return ""


def _weight_files(
    component: str,
    files: set[str],
    read_json: Callable[[str], Any],
    where: str,
    problems: list[str],
    unsafe: list[str],
) -> tuple[str, ...]:
    """The safetensors files ``component`` loads; appends to ``problems`` / ``unsafe`` when there are none."""
    stem = WEIGHT_STEMS[component]
    single = f"{component}/{stem}.safetensors"
    index_file = f"{single}.index.json"
    if single in files and index_file in files:
        problems.append(
            f"{component}/ has both {stem}.safetensors and a sharded index: ambiguous, remove one"
        )
        return ()
    if single in files:
        return (single,)
    if index_file in files:
        weight_map = _read_json_checked(read_json, index_file, where)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            problems.append(f"{index_file} has no 'weight_map'")
            return ()
        shards = sorted({f"{component}/{name}" for name in weight_map.values()})
        bad = [s for s in shards if not s.endswith(".safetensors") or "/" in s[len(component) + 1 :]]
        if bad:
            problems.append(f"{index_file} lists files that are not safetensors shards: {bad}")
            return ()
        missing = [s for s in shards if s not in files]
        if missing:
            problems.extend(f"{s} missing (listed in {index_file})" for s in missing)
            return ()
        return tuple(shards)
    top = sorted(rel for rel in files if posixpath.dirname(rel) == component)
    pickles = [rel for rel in top if rel.endswith(PICKLE_SUFFIXES)]
    other_safetensors = [rel for rel in top if rel.endswith(".safetensors")]
    if other_safetensors:
        problems.append(
            f"{single} missing; found only {other_safetensors} "
            "(variant weights such as *.fp16.safetensors are not loaded)"
        )
    elif pickles:
        unsafe.append(f"{component}/ has only pickle checkpoints {pickles} and no *.safetensors")
    else:
        problems.append(f"{single} missing (no weights in {component}/)")
    return ()


def _read_json_checked(read_json: Callable[[str], Any], rel: str, where: str) -> Any:
    try:
        return read_json(rel)
    except json.JSONDecodeError as error:
        raise ModelLayoutError(where, [f"{rel} is not valid JSON ({error})"]) from error


def wanted(rel: str) -> bool:
    """Whether a load needs the file ``rel`` (it matches ``FILE_PATTERNS``)."""
    return any(fnmatch.fnmatchcase(rel, pattern) for pattern in FILE_PATTERNS)
