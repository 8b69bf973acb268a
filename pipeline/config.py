"""The job configuration: strict, frozen dataclasses loaded from YAML.

A job file (``jobs/*.yaml``) has these sections, every one optional except ``input``, ``output`` and
``model.source`` (which a preset may supply)::

    presets: [models/shapes-v3, compute/cpu]   # partial job files under configs/, merged in order
    name: shapes_recolor
    input:   {paths: [...]}                   # Parquet files, globs or prefixes
    output:  {path: ..., rows_per_file: 64, input_image: original, image_format: png, image_quality: 90}
    model:   {source: ..., revision: ..., cache_dir: ...}
    params:  {num_inference_steps: 50, ...}   # diffedit.EditParams fields (job-wide defaults)
    compute: {device: cpu, dtype: float32, actors: 1, ...}
    storage: {endpoint_url: ..., region: ..., anonymous: false}
    images:  {allow: [...], max_bytes: ..., max_pixels: ..., max_side: ..., modes: [...]}
    failure: {max_failed_fraction: 0.05}
    limits:  {max_inference_steps: 200, max_mask_draws: 64, ...}   # per-row cost ceilings
    scoring: {preservation: true, mask: true, alignment: true, ...}  # score_* columns (diffedit.scores)
    selection: {candidates: 1, by: {alignment: 1.0}}                 # best-of-K (diffedit.select)
    filter:  {min: {alignment: 0.5}, max: {mask_components: 3}}       # the keep / reject_reason columns

Rules (each violation is a ``ConfigError`` naming the file and the dotted key):

* an unknown key, a key written twice in one mapping or a wrong type is an error (integers are
  accepted for floats, never booleans);
* ``${VAR}`` in any string is replaced by the environment variable ``VAR`` (an error when unset),
  ``${VAR:-default}`` falls back to ``default``, ``$${`` is a literal ``${``;
* presets are merged first (a preset is a partial job file), the job file last: mappings merge key by
  key, everything else is replaced;
* relative local paths (``input.paths``, ``output.path``, ``model.source``, ``model.cache_dir``,
  folders in ``images.allow``) are resolved against the current working directory of the command, once,
  before anything runs (``resolve_paths``); a job file and the presets it names are both partial
  configurations of one job, and presets are shared (shipped with the package), so a path in them
  cannot be relative to their own file; the working directory is the one base that means the same in
  both, in a cron line (``cd /srv/diffedit && ...``), in Airflow (``cwd=``) and under ``ray job submit
  --working-dir`` (the uploaded copy). Paths never enter the results identity (``pipeline.identity``),
  so the same job from another checkout, or with the model moved, resumes the same output;
* ``model.source`` is read by its form alone, never by guessing from what exists: ``hf://org/name``
  is a Hugging Face Hub repository (``model.revision`` pins it); ``scheme://...`` is a URI (``s3://``,
  ``gs://``, ``file://``...); anything else is a local path, and a local path that does not exist is a
  configuration error (never a hub id);
* credentials are never part of a config: ``storage`` takes no keys or secrets (S3 credentials come
  from the environment, e.g. ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or an instance role).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml

from diffedit import strict
from diffedit.params import EditParams

#: Where named presets live: ``$DIFFEDIT_CONFIGS``, else the presets shipped in the package
#: (``pipeline/configs``, the repository's ``configs/`` folder, linked into the package and installed
#: with it as package data).
CONFIGS_DIR_ENV = "DIFFEDIT_CONFIGS"
DEFAULT_CONFIGS_DIR = Path(__file__).resolve().parent / "configs"

#: Keys that would carry credentials; refused with a pointer to the environment.
CREDENTIAL_KEYS = frozenset(
    {"key", "secret", "token", "password", "access_key", "secret_key", "aws_access_key_id",
     "aws_secret_access_key", "aws_session_token", "session_token", "credentials"}
)  # fmt: skip


class ConfigError(ValueError):
    """A job configuration problem: unknown key, wrong type, missing file, unset variable."""


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class InputConfig:
    """Where the manifest is: Parquet files, globs (``*``, ``**``) or prefixes (folders)."""

    paths: tuple[str, ...]


@dataclass(frozen=True)
class OutputConfig:
    """Where the edited dataset goes (a folder or prefix), and how many rows one Parquet file holds."""

    path: str
    rows_per_file: int = 64  # rows per committed part, exactly (the last part a run writes may hold fewer)
    #: How a row's input is stored in ``input_image``: ``original`` (the file's bytes as fetched, when
    #: they show what was edited: upright, PNG/JPEG/WebP; else PNG of the decoded pixels), ``png`` (the
    #: decoded, upright RGB as PNG, always), ``reference`` (no bytes, the URI in ``path``; rows given
    #: as ``image_bytes`` have no URI and are stored as ``original``).
    input_image: Literal["original", "png", "reference"] = "original"
    #: The edited image's encoding: ``png`` (lossless), ``webp`` or ``jpeg`` at ``image_quality``. The
    #: mask is always PNG (binary: a lossy codec would blur it).
    image_format: Literal["png", "webp", "jpeg"] = "png"
    image_quality: int = 90  # 1-100, webp and jpeg only


@dataclass(frozen=True)
class ModelConfig:
    """The model: a local diffusers folder (a path: relative to the working directory), a URI
    (``file://``, ``s3://``, ``gs://``), or a Hugging Face Hub repository written ``hf://org/name``."""

    source: str
    revision: str | None = None  # hf:// only: a branch, tag or commit, resolved to a commit per run
    cache_dir: str | None = None  # local cache for s3:// and hub models (default: the loader's)


@dataclass(frozen=True)
class ComputeConfig:
    """How the job runs on Ray.

    ``actors`` is a fixed number of model actors or a ``[min, max]`` autoscaling range. Every actor
    reserves ``cpus_per_actor`` CPUs and ``gpus_per_actor`` GPUs and runs torch on ``torch_threads``
    threads (0: as many as it reserves CPUs, at least 1). Reading, fetching, encoding and writing run as
    tasks reserving ``io_cpus`` each (Ray Data's file listing reserves one CPU). On a machine with C
    CPUs, keep ``max_actors * cpus_per_actor + max(1, io_cpus) <= C``, or the read tasks can never be
    scheduled and Ray Data waits for ever (Ray issue 44687). ``validate`` and ``run`` check the plan
    against the cluster's nodes (``pipeline.plan``); a watchdog bounds what no check can foresee
    (``actor_startup_timeout_s``, ``progress_timeout_s``).
    """

    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    actors: int | tuple[int, int] = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    torch_threads: int = 0
    # Batch sizes; null (unset): the per-family plan's value for the model (pipeline.sizing), a value
    # set here always wins.
    batch_size: int | None = None  # rows per call of the editor (per actor call when not grouping)
    max_batch: int | None = None  # UNet samples per forward pass (DiffEditor.max_batch)
    vae_batch: int | None = None  # images per VAE encode/decode call (DiffEditor.vae_batch)
    # rows per actor call, edited in chunks of batch_size rows of one model resolution; 0: off
    group_window: int | None = None
    vae_tiling: bool = False  # VAE encode/decode in tiles: bounded memory on large images
    vae_slicing: bool = False  # VAE decode one image at a time within a call (diffusers' enable_slicing)
    io_cpus: float = 0.25
    fetch_threads: int = 8  # concurrent image downloads inside one fetch task
    rows_per_block: int = 32  # rows per Ray block after reading: the unit of streaming and of progress
    channels_last: bool = False  # NHWC convolutions in the UNet and VAE (ModelBundle.optimize)
    compile_unet: bool = False  # torch.compile the UNet, dynamic in the batch (diffedit.compiled)
    actor_memory_gb: float = 0.0  # Ray "memory" each model actor reserves (GiB); 0: reserves none
    # The run fails with exit 1 (a rerun may succeed) when no model actor has loaded the model this many
    # seconds after the plan started (resources that never come, a load that hangs); 0: wait for ever.
    actor_startup_timeout_s: float = 1800.0
    # ... or when, once an actor is ready, no row has finished the model stage for this long; 0: never.
    progress_timeout_s: float = 1800.0

    @property
    def min_actors(self) -> int:
        return self.actors if isinstance(self.actors, int) else self.actors[0]

    @property
    def max_actors(self) -> int:
        return self.actors if isinstance(self.actors, int) else self.actors[1]

    @property
    def threads(self) -> int:
        """torch threads inside one actor."""
        return self.torch_threads or max(1, int(self.cpus_per_actor))


@dataclass(frozen=True)
class StorageConfig:
    """Options of S3-compatible storage (s3fs); credentials come only from the environment.

    Transient errors (connection refused or reset, timeouts, 5xx, throttling) are retried by botocore
    with exponential backoff and jitter (``retry_mode``, ``max_attempts``: attempts per request, the
    first included), and read timeouts once more by s3fs. A fetch or commit task that still fails on one
    is run again by Ray Data up to ``task_retries`` times, with exponential backoff and jitter (Ray Data's
    ``retried_map_errors``; safe: a fetch has no effect, a commit is idempotent, the part's name being its
    ids' hash). What persists fails the run (exit 1) without committing the row (``pipeline.faults``).
    """

    endpoint_url: str | None = None
    region: str | None = None
    anonymous: bool = False
    retry_mode: Literal["standard", "adaptive", "legacy"] = "adaptive"  # botocore retry mode
    max_attempts: int = 10  # botocore attempts per request (~1 min of backoff at 10)
    connect_timeout: float = 10.0  # seconds to open a connection
    read_timeout: float = 20.0  # seconds to wait for each read of a response (a paused server)
    task_retries: int = 3  # Ray Data re-runs of a fetch/commit task that failed on a transient error


#: Modes accepted by default: photographs and graphics. 32-bit integer/float, LAB and HSV images are
#: refused (they are measurements, not pictures, and have no canonical RGB rendering).
DEFAULT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                 "I;16", "I;16B", "I;16L", "I;16N")  # fmt: skip


@dataclass(frozen=True)
class ImagesConfig:
    """Where rows may read images from, and the limits applied when fetching and decoding them.

    ``allow`` lists URI prefixes (``s3://bucket/coco/``, ``https://images.example.com/``, a local
    folder) or bare schemes (``s3://``, ``file://``); a row whose ``image`` matches none fails. Empty:
    no URI may be read (rows must carry ``image_bytes``).
    """

    allow: tuple[str, ...] = ()
    max_bytes: int = 50 * 1024 * 1024  # encoded size
    max_pixels: int = 50_000_000  # width x height, checked from the header: the decompression-bomb limit
    max_side: int = 8192  # the longer side, in pixels
    modes: tuple[str, ...] = DEFAULT_MODES


@dataclass(frozen=True)
class LimitsConfig:
    """Per-row ceilings on what a manifest row's overrides may cost; a row above one fails with an error
    naming the key (``limits.max_inference_steps``); the job's own ``params`` must respect them too.
    Defaults: four times the paper's settings, so no sensible row is refused."""

    max_inference_steps: int = 200  # DDIM steps (num_inference_steps); the paper and SD use 50
    max_mask_draws: int = 64  # noise draws per mask (num_mask_draws); the paper uses 10
    max_unet_evals: int = 1000  # UNet samples of one edit (mask draws x 2 + encode + decode x CFG)
    max_prompt_chars: int = 2000  # characters of caption, query and negative prompt (tokenizers truncate)


@dataclass(frozen=True)
class FailureConfig:
    """The job fails (non-zero exit, no ``_SUCCESS``) when more than this fraction of rows failed."""

    max_failed_fraction: float = 0.05


@dataclass(frozen=True)
class ScoringConfig:
    """The scores every ok row gets (``diffedit.scores``: units, ranges and cost); a score switched off
    is a null column. ``alignment`` costs 2 x strengths x draws UNet evaluations per image (the input
    once, each candidate once)."""

    preservation: bool = True  # score_psnr, score_ssim: input vs edit outside the mask
    mask: bool = True  # score_mask_components, score_mask_largest
    alignment: bool = True  # score_alignment: the model's own "fits the query rather than the caption"
    alignment_strengths: tuple[float, ...] = (0.1, 0.2)  # noise strengths in (0, 1]
    alignment_draws: int = 1  # noise draws per strength
    # A transformers CLIP model on disk (a local directory, relative to the working directory, or
    # hf://org/name already in the local Hugging Face cache): the four score_clip_* columns. Never
    # downloaded; one that is not there is a configuration error (exit 2) before anything runs.
    clip_model: str | None = None


@dataclass(frozen=True)
class SelectionConfig:
    """Best-of-K (``diffedit.select``): ``candidates`` edits per row with seeds derived from the row's,
    the one with the highest ``by`` kept (score name -> weight, a weighted sum of ``score_*`` values)."""

    candidates: int = 1
    by: dict[str, float] = field(default_factory=lambda: {"alignment": 1.0})
    # Parameter overrides of candidates 1, 2, ... in turn (candidate 0 is the plain edit); mask and
    # decoding parameters only (diffedit.select.VARIANT_KEYS), so the candidates share the inversion.
    variants: tuple[dict[str, bool | int | float | str], ...] = ()


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds on the scores (names without ``score_``): an ok row is kept when every named score is
    present and ``>= min[name]`` and ``<= max[name]``; the others get ``keep`` false and a
    ``reject_reason`` naming each failed bound. Rows are never dropped: a dataset user filters on ``keep``."""

    min: dict[str, float] = field(default_factory=dict)
    max: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class JobConfig:
    """A whole job, validated; ``source`` is the job file it came from."""

    input: InputConfig
    output: OutputConfig
    model: ModelConfig
    name: str = "diffedit"
    params: EditParams = field(default_factory=EditParams)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    failure: FailureConfig = field(default_factory=FailureConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    source: str = "<dict>"
    presets: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready), without ``source`` and ``presets`` (where it came from)."""
        data = dataclasses.asdict(self)
        data.pop("source")
        data.pop("presets")
        return _jsonable(data)

    @property
    def config_hash(self) -> str:
        """sha256 of the resolved configuration (canonical JSON)."""
        return _sha256_json(self.to_dict())


def resolve_paths(job: JobConfig, cwd: str | None = None) -> JobConfig:
    """``job`` with its relative local paths (input, output, model, cache, allow-list folders) made
    absolute against ``cwd`` (default: the working directory), as Ray workers have their own. See the
    module docstring for the rule; ``model.source`` keeps its form (``hf://``, a URI, or a path)."""
    base = Path(cwd or os.getcwd())

    def absolute(p: str) -> str:
        if "://" in p or "::" in p:
            return p
        return os.path.normpath(str(base / os.path.expanduser(p)))

    source = job.model.source
    if source.startswith("file://"):
        source = absolute(source[len("file://") :])
    elif "://" not in source and "::" not in source:
        source = absolute(source)
    return dataclasses.replace(
        job,
        input=InputConfig(paths=tuple(absolute(p) for p in job.input.paths)),
        output=dataclasses.replace(job.output, path=absolute(job.output.path)),
        model=dataclasses.replace(
            job.model,
            source=source,
            cache_dir=absolute(job.model.cache_dir) if job.model.cache_dir else None,
        ),
        scoring=dataclasses.replace(
            job.scoring, clip_model=absolute(job.scoring.clip_model) if job.scoring.clip_model else None
        ),
        images=dataclasses.replace(
            job.images,
            allow=tuple(a if a.rstrip("/").endswith(":") else absolute(a) for a in job.images.allow),
        ),
    )


SECTIONS: dict[str, type] = {
    "input": InputConfig,
    "output": OutputConfig,
    "model": ModelConfig,
    "compute": ComputeConfig,
    "storage": StorageConfig,
    "images": ImagesConfig,
    "failure": FailureConfig,
    "limits": LimitsConfig,
    "scoring": ScoringConfig,
    "selection": SelectionConfig,
    "filter": FilterConfig,
}
TOP_LEVEL = frozenset({*SECTIONS, "params", "name", "presets"})


# --------------------------------------------------------------------------- loading


def load_job(
    path: str | Path, env: Mapping[str, str] | None = None, configs_dir: str | Path | None = None
) -> JobConfig:
    """Load, interpolate, merge presets and validate a job file."""
    env = os.environ if env is None else env
    path = Path(path)
    data = _read_yaml(path)
    data = interpolate(data, env, str(path))
    check_document(data, str(path), allow_presets=True)
    preset_names = data.get("presets") or []
    merged: dict[str, Any] = {}
    for name in preset_names:
        preset_path = resolve_preset(name, path, configs_dir or env.get(CONFIGS_DIR_ENV))
        preset = interpolate(_read_yaml(preset_path), env, str(preset_path))
        check_document(preset, str(preset_path), allow_presets=False)
        merged = deep_merge(merged, preset)
    merged = deep_merge(merged, {k: v for k, v in data.items() if k != "presets"})
    return build_job(merged, source=str(path), presets=tuple(preset_names))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    text = path.read_text()
    try:
        _check_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), str(path))
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _check_duplicate_keys(node: Any, source: str, where: str = "") -> None:
    """A key written twice in one mapping is an error (YAML loaders keep the last one silently: a
    second ``output:`` block would drop the first). Walks the composed node tree, naming the dotted key
    and both lines."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            dotted = f"{where}.{key}" if where else str(key)
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ConfigError(
                        f"{source}: {dotted}: duplicate key (line {line}; first at line {seen[key]}): "
                        "write each key once"
                    )
                seen[key] = line
            _check_duplicate_keys(value_node, source, dotted)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(item, source, f"{where}[{i}]")


def resolve_preset(name: Any, job_path: Path, configs_dir: str | Path | None) -> Path:
    """A preset name (``compute/cpu``) -> ``<configs>/compute/cpu.yaml``; a name ending in ``.yaml``
    is a path relative to the job file."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{job_path}: presets: each preset must be a non-empty string, got {name!r}")
    if name.endswith((".yaml", ".yml")):
        candidate = (job_path.parent / name).resolve()
    else:
        candidate = Path(configs_dir or DEFAULT_CONFIGS_DIR) / f"{name}.yaml"
    if not candidate.is_file():
        where = (
            "a path relative to the job file"
            if name.endswith((".yaml", ".yml"))
            else f"named presets come from ${CONFIGS_DIR_ENV} when set, else from {DEFAULT_CONFIGS_DIR}"
        )
        raise ConfigError(f"{job_path}: presets: preset {name!r} not found (looked for {candidate}; {where})")
    return candidate


_VAR = re.compile(r"\$(\$?)\{([^}]*)\}")


class EnvValue(str):
    """A string that was exactly one ``${VAR}`` reference: where the config expects a number or a
    boolean, it is read as a YAML scalar (``${MAX_FAILED}`` = "0.1" -> 0.1)."""


def interpolate(data: Any, env: Mapping[str, str], source: str, where: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of ``data`` from ``env``."""
    if isinstance(data, dict):
        return {k: interpolate(v, env, source, f"{where}.{k}" if where else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, source, f"{where}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, str):
        return data

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):  # $${...}: a literal ${...}
            return "${" + match.group(2) + "}"
        expr = match.group(2)
        name, sep, default = expr.partition(":-")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(f"{source}: {where}: invalid variable reference ${{{expr}}}")
        value = env.get(name)
        if value is None or (sep and value == ""):
            if sep:
                return default
            raise ConfigError(
                f"{source}: {where}: environment variable {name} is not set (used as ${{{name}}})"
            )
        return value

    whole = _VAR.fullmatch(data)
    result = _VAR.sub(substitute, data)
    return EnvValue(result) if whole and not whole.group(1) else result


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value in ``over`` replaces the one in ``base``."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def check_document(data: Mapping[str, Any], source: str, *, allow_presets: bool) -> None:
    """Check one file's keys and value types (required keys are checked after merging)."""
    allowed = TOP_LEVEL if allow_presets else TOP_LEVEL - {"presets"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        hint = " (presets may not name presets)" if "presets" in unknown else ""
        raise ConfigError(f"{source}: unknown key(s) {unknown}{hint}; known: {sorted(allowed)}")
    if "name" in data and not isinstance(data["name"], str):
        raise ConfigError(f"{source}: name: must be a string, got {type(data['name']).__name__}")
    if "presets" in data and not isinstance(data["presets"], list):
        raise ConfigError(f"{source}: presets: must be a list of names, got {type(data['presets']).__name__}")
    for section, cls in SECTIONS.items():
        if section in data:
            _check_section(data[section], cls, section, source)
    if "params" in data:
        params = data["params"]
        if not isinstance(params, Mapping):
            raise ConfigError(f"{source}: params: must be a mapping, got {type(params).__name__}")
        try:
            EditParams.from_dict(params_values(params), source=f"{source}: params")
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None


def params_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with whole-``${VAR}`` values read as numbers/booleans where the field is one."""
    hints = get_type_hints(EditParams)
    out = {}
    for key, value in params.items():
        out[key] = _env_scalar(value, hints.get(key))
    return out


def _check_section(data: Any, cls: type, section: str, source: str) -> dict[str, Any]:
    """Check a section's keys and types; return the coerced values present."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {section}: must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    secret = sorted(set(data) & CREDENTIAL_KEYS)
    if secret:
        raise ConfigError(
            f"{source}: {section}: {secret} not allowed: credentials come only from the environment "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role, ...)"
        )
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: {section}: unknown key(s) {unknown}; known: {sorted(known)}")
    return {key: coerce(value, hints[key], f"{source}: {section}.{key}") for key, value in data.items()}


def build_job(data: Mapping[str, Any], *, source: str = "<dict>", presets: tuple[str, ...] = ()) -> JobConfig:
    """A ``JobConfig`` from merged data (after ``check_document``); checks required keys and ranges."""
    check_document(data, source, allow_presets=True)
    kwargs: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = _check_section(data.get(section, {}), cls, section, source)
        missing = [f.name for f in fields(cls) if f.name not in values and _is_required(f)]
        if section in ("input", "output", "model") and missing:
            raise ConfigError(
                f"{source}: {section}.{missing[0]} is required"
                + (" (set it here or in a preset)" if section == "model" else "")
            )
        kwargs[section] = cls(**values)
    kwargs["params"] = EditParams.from_dict(params_values(data.get("params", {})), source=f"{source}: params")
    if "name" in data:
        kwargs["name"] = data["name"]
    job = JobConfig(**kwargs, source=source, presets=presets)
    _check_ranges(job)
    return job


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _check_ranges(job: JobConfig) -> None:
    src = job.source
    problems = []
    if not job.input.paths:
        problems.append("input.paths must list at least one path")
    if any(not p.strip() for p in job.input.paths):
        problems.append("input.paths holds an empty path")
    if not job.output.path.strip():
        problems.append("output.path is empty")
    if not job.model.source.strip():
        problems.append("model.source is empty")
    if job.output.rows_per_file < 1:
        problems.append(f"output.rows_per_file must be >= 1, got {job.output.rows_per_file}")
    if not 1 <= job.output.image_quality <= 100:
        problems.append(f"output.image_quality must be in [1, 100], got {job.output.image_quality}")
    c = job.compute
    if c.min_actors < 1 or c.max_actors < c.min_actors:
        problems.append(
            f"compute.actors must be >= 1 or a range [min, max] with 1 <= min <= max, got {c.actors}"
        )
    if c.cpus_per_actor <= 0:
        problems.append(f"compute.cpus_per_actor must be > 0, got {c.cpus_per_actor}")
    if c.gpus_per_actor < 0:
        problems.append(f"compute.gpus_per_actor must be >= 0, got {c.gpus_per_actor}")
    if c.device == "cuda" and c.gpus_per_actor <= 0:
        problems.append("compute.gpus_per_actor must be > 0 when compute.device is cuda")
    if c.device == "cpu" and c.gpus_per_actor > 0:
        problems.append("compute.gpus_per_actor must be 0 when compute.device is cpu")
    if c.device == "cpu" and c.dtype == "float16":
        problems.append("compute.dtype float16 is not supported on cpu (use float32 or bfloat16)")
    for key in ("torch_threads", "actor_memory_gb", "actor_startup_timeout_s", "progress_timeout_s"):
        if getattr(c, key) < 0:
            problems.append(f"compute.{key} must be >= 0, got {getattr(c, key)}")
    for key in ("batch_size", "max_batch", "vae_batch", "fetch_threads", "rows_per_block"):
        if getattr(c, key) is not None and getattr(c, key) < 1:
            problems.append(f"compute.{key} must be >= 1, got {getattr(c, key)}")
    if c.group_window is not None and c.group_window < 0:
        problems.append(f"compute.group_window must be >= 0 (0: off), got {c.group_window}")
    elif c.group_window and c.batch_size is not None and 0 < c.group_window < c.batch_size:
        problems.append(
            f"compute.group_window must be 0 (off) or >= compute.batch_size ({c.batch_size}), "
            f"got {c.group_window}"
        )
    if c.io_cpus < 0:
        problems.append(f"compute.io_cpus must be >= 0, got {c.io_cpus}")
    im = job.images
    for key in ("max_bytes", "max_pixels", "max_side"):
        if getattr(im, key) < 1:
            problems.append(f"images.{key} must be >= 1, got {getattr(im, key)}")
    if any(not a.strip() for a in im.allow):
        problems.append("images.allow holds an empty prefix")
    if not im.modes:
        problems.append("images.modes must list at least one mode")
    st = job.storage
    if st.max_attempts < 1:
        problems.append(f"storage.max_attempts must be >= 1, got {st.max_attempts}")
    for key in ("connect_timeout", "read_timeout"):
        if getattr(st, key) <= 0:
            problems.append(f"storage.{key} must be > 0, got {getattr(st, key)}")
    if st.task_retries < 0:
        problems.append(f"storage.task_retries must be >= 0, got {st.task_retries}")
    for f in fields(LimitsConfig):
        if getattr(job.limits, f.name) < 1:
            problems.append(f"limits.{f.name} must be >= 1, got {getattr(job.limits, f.name)}")
    if not problems:
        from pipeline.limits import LimitError, check_limits

        try:
            check_limits(job.params, job.limits)
        except LimitError as exc:
            problems.append(f"params: {exc}")
    if not 0.0 <= job.failure.max_failed_fraction <= 1.0:
        problems.append(
            f"failure.max_failed_fraction must be in [0, 1], got {job.failure.max_failed_fraction}"
        )
    problems += _scoring_problems(job)
    if problems:
        raise ConfigError(f"{src}: " + "; ".join(problems))


#: The most candidates a row may be edited with (each costs a mask and a decode).
MAX_CANDIDATES = 64


def computed_scores(scoring: ScoringConfig) -> tuple[str, ...]:
    """The score names (without ``score_``) a job's scoring computes (none when it is invalid)."""
    from diffedit.scores import Scoring

    try:
        return Scoring(**dataclasses.asdict(scoring)).names
    except ValueError:
        return ()


def scoring_of(job: JobConfig) -> Any:
    """The job's ``scoring`` as the library's ``diffedit.scores.Scoring``."""
    from diffedit.scores import Scoring

    return Scoring(**dataclasses.asdict(job.scoring))


def _library_problems(section: str, build: Any) -> list[str]:
    """The library's own checks of a section (``invalid ...: a; b``), each named ``section.key``."""
    try:
        build()
    except ValueError as exc:
        return [f"{section}.{p}" for p in str(exc).split(": ", 1)[-1].split("; ")]
    return []


def _scoring_problems(job: JobConfig) -> list[str]:
    """``scoring``, ``selection`` and ``filter``: the library's checks (``diffedit.scores.Scoring``,
    ``diffedit.select.Selection``), then what only the job knows: the candidate ceiling, each variant
    against the job's params, and scores named by ``by`` or the filter that the scoring switched off."""
    from diffedit.scores import SCORE_NAMES, Scoring
    from diffedit.select import Selection

    sc, sel = job.scoring, job.selection
    problems = _library_problems("scoring", lambda: Scoring(**dataclasses.asdict(sc)))
    problems += _library_problems("selection", lambda: Selection(**dataclasses.asdict(sel)))
    if sel.candidates > MAX_CANDIDATES:
        problems.append(f"selection.candidates must be <= {MAX_CANDIDATES}, got {sel.candidates}")
    for i, variant in enumerate(sel.variants):
        try:
            EditParams.from_dict(variant, source=f"selection.variants[{i}]", base=job.params)
        except (TypeError, ValueError) as exc:
            problems.append(str(exc))
    have = computed_scores(sc)
    for where, names in (
        ("selection.by", sel.by),
        ("filter.min", job.filter.min),
        ("filter.max", job.filter.max),
    ):
        for name in names:
            if name not in SCORE_NAMES:
                if where != "selection.by":  # the library's Selection names unknown scores in by
                    problems.append(f"{where}.{name}: unknown score; known: {list(SCORE_NAMES)}")
            elif name not in have and (where != "selection.by" or sel.candidates > 1):
                problems.append(f"{where}.{name}: the score is switched off in scoring")
    return problems


# --------------------------------------------------------------------------- typing


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against ``hint``; return it as that type (lists become tuples): the library's
    ``diffedit.strict.coerce`` (the one mechanism), with a whole ``${VAR}`` read as YAML where a boolean
    or a number is expected, and its error as a ``ConfigError``."""
    try:
        return strict.coerce(value, hint, where, read_scalar=_env_scalar)
    except strict.StrictTypeError as exc:
        raise ConfigError(str(exc)) from None


def _env_scalar(value: Any, hint: Any) -> Any:
    """A whole ``${VAR}`` (``EnvValue``) where ``hint`` is a boolean or a number, read as YAML when it
    parses as one; any other value as it is."""
    if not isinstance(value, EnvValue) or hint not in (bool, int, float):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return str(value)
    return parsed if isinstance(parsed, (bool, int, float)) else str(value)


def _jsonable(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _jsonable(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_jsonable(v) for v in data]
    return data


def _sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


__all__ = [
    "ComputeConfig",
    "ConfigError",
    "FailureConfig",
    "FilterConfig",
    "ImagesConfig",
    "InputConfig",
    "JobConfig",
    "LimitsConfig",
    "ModelConfig",
    "OutputConfig",
    "ScoringConfig",
    "SelectionConfig",
    "StorageConfig",
    "build_job",
    "deep_merge",
    "interpolate",
    "load_job",
]
