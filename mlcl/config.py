"""One typed configuration for notebooks, the CLI and papermill alike.

A configuration is four sections of dataclasses, ``data``, ``model``, ``optim`` and ``run``, and
the ``method`` section: the options of the method named by ``model.method``, kept here as plain
data. This module never imports a method: each method declares its own options dataclass, and
:func:`mlcl.methods.method_options` checks the section against it (as timm's ``create_model``
hands keyword arguments to a model's entry point), so method keys are typed too. A configuration
is read from YAML, overridden with ``key.sub=value`` strings (the CLI's ``--set``) or a dict (a
notebook's parameters), and saved beside every run.

Named presets ship in ``mlcl/presets/*.yaml``: ``load_config("baseline-quick")`` reads one, and a
path to any YAML file works the same way. A preset may start from another with ``base: NAME``;
its first comment line is its description (``mlcl presets``).

Every value is checked against its field's type (pydantic, strict: no string is read as a number):
an unknown key, a value of the wrong type or a choice outside a ``Literal`` raises ``ConfigError``
naming the key. A numeric field declared with
:func:`ranged` is also checked against its range (``data.image_size: must be > 0, got -5``), so a
bad number stops the run here rather than as a traceback in a loader worker. YAML is read with
YAML 1.2's scalars: ``off`` and ``no`` are strings, ``1e-4`` is a number.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from mlcl.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Range:
    """Where a number must lie: ``"> 0"``, ``">= 0"``, or an interval ``"[0, 1)"``, ``"(0, 1)"``.
    Infinities and NaN are outside every range."""

    low: float
    high: float
    low_open: bool
    high_open: bool
    text: str  # as messages write it: "> 0", "in [0, 1)"

    @classmethod
    def parse(cls, rule: str) -> Range:
        bound = re.fullmatch(r">(=?)\s*(\S+)", rule)
        if bound:
            return cls(float(bound[2]), math.inf, not bound[1], True, rule)
        interval = re.fullmatch(r"([\[(])\s*([^,\s]+)\s*,\s*([^\s\])]+)\s*([\])])", rule)
        if interval:
            low, high = float(interval[2]), float(interval[3])
            return cls(low, high, interval[1] == "(", interval[4] == ")", f"in {rule}")
        raise ValueError(f"not a range: {rule!r} (write '> 0', '>= 0' or '[0, 1)')")

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


def ranged(default: Any, rule: str) -> Any:
    """A dataclass field with a default whose value, or each value of a tuple, must lie in
    ``rule`` (see :class:`Range`); configuration sections and method options declare their
    numeric fields with it."""
    return field(default=default, metadata={"range": Range.parse(rule)})


@dataclass
class DataConfig:
    # synthetic | coco2014 | coco2017 | voc2007 | voc2012 | nuswide | csv (your own images)
    dataset: str = "synthetic"
    root: str = ""  # synthetic: "" = generated on first use under $MLCL_DATA_DIR or ~/.cache/mlcl
    image_size: int = ranged(128, "> 0")
    batch_size: int = ranged(32, "> 0")  # per process
    eval_batch_size: int = ranged(0, ">= 0")  # 0: same as batch_size
    workers: int = ranged(2, ">= 0")
    # single_positive: one observed positive per training image, the others unknown
    labels: Literal["full", "single_positive"] = "full"
    single_positive_seed: int = ranged(0, ">= 0")
    keep_empty: bool = True  # COCO: keep images without annotations (all-negative)
    use_difficult: bool = False  # VOC: count objects marked difficult as positives
    augment: Literal["flip", "crop"] = "flip"  # flip: resize + flip | crop: random resized crop
    randaugment: bool = False
    # Side of the Cutout hole as a fraction of the image side; 0 = off
    cutout: float = ranged(0.0, "[0, 1)")
    # Where JPEGs are decoded. loader: in the loader's workers (PIL), the usual. device: the
    # workers only read the files' bytes, and the engine decodes and augments each batch on the
    # training device (nvjpeg on a GPU), for nodes with too few CPU cores per GPU to keep up;
    # no RandAugment there (mlcl.data.device_decode).
    decode: Literal["loader", "device"] = "loader"
    limit_train: int = ranged(0, ">= 0")  # use only the first N training images (0 = all)
    # Fraction of the training images held out (a fixed, seeded draw) as the "holdout" split,
    # on which `mlcl evaluate --calibrate` picks per-class thresholds; training never sees them.
    holdout: float = ranged(0.0, "[0, 1)")
    # An image that cannot be decoded during training: error ends the run naming the file;
    # skip leaves it out of its batch, counts it, and names it in the log and the summary. That
    # batch is then one image smaller (CUDA graphs of run.compile_mode record it anew).
    bad_images: Literal["error", "skip"] = "error"
    limit_val: int = ranged(0, ">= 0")
    # Normalisation of the backbone's pre-training (timm's ResNets: ImageNet).
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = ranged(IMAGENET_STD, "> 0")
    # The built-in data set is generated at `root` on first use with these sizes.
    synthetic_train: int = ranged(2000, "> 0")
    synthetic_val: int = ranged(500, "> 0")
    synthetic_seed: int = ranged(0, ">= 0")
    synthetic_image_size: int = ranged(128, "> 0")
    # classic: the book's first data set; mechanisms: small objects in clutter, look-alike twins
    # told apart by their scene, stronger scene-dependent pairs, more varied looks
    # (mlcl.data.synthetic_scenes.SETTINGS; chapter 01 says which property serves which method)
    synthetic_setting: Literal["classic", "mechanisms"] = "classic"


@dataclass
class ModelConfig:
    method: str = "baseline"
    backbone: str = "resnet18"  # any timm model name
    pretrained: bool = False  # ImageNet weights from the timm hub (needs the internet)
    pretrained_file: str = ""  # or from a local file (.pth / .safetensors)
    # 0: the backbone's own (32 for ResNets); 16 or 8 dilate the last stages
    output_stride: int = ranged(0, ">= 0")
    # The first backbone stages (the stem is stage 1) whose weights stay fixed: 0 none; 2 the stem
    # and the first residual stage, as SADCL's / Query2Label's code trains a ResNet (layer2-4)
    frozen_stages: int = ranged(0, ">= 0")
    # BatchNorm with fixed statistics and affine weights (x · scale + shift), as in that code
    frozen_batchnorm: bool = False


@dataclass
class OptimConfig:
    lr: float = ranged(1e-3, ">= 0")  # 0 freezes the weights (a control run)
    weight_decay: float = ranged(1e-4, ">= 0")
    betas: tuple[float, float] = ranged((0.9, 0.999), "[0, 1)")
    # The learning rate follows the schedule per iteration; a method's parameter group may set
    # its own "lr", which the schedule then scales the same way.
    schedule: Literal["onecycle", "cosine", "constant", "step"] = "onecycle"
    warmup_epochs: float = ranged(0.0, ">= 0")  # cosine / constant / step: linear warm-up length
    pct_start: float = ranged(0.2, "(0, 1)")  # onecycle: fraction of steps spent warming up
    # The step schedule multiplies the learning rate by step_gamma every step_epochs.
    step_epochs: float = ranged(1.0, "> 0")
    step_gamma: float = ranged(0.1, "> 0")
    grad_clip: float = ranged(10.0, ">= 0")  # max gradient norm, per phase; 0 = off


@dataclass
class RunConfig:
    out_dir: str = "runs/default"
    epochs: int = ranged(10, "> 0")
    # Stop after this many optimisation iterations in total (0 = no limit)
    max_steps: int = ranged(0, ">= 0")
    seed: int = ranged(0, ">= 0")  # NumPy's SeedSequence takes no negative seed
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: bf16 on GPUs that support it, fp16 with a gradient scaler on other GPUs; on the CPU
    # bf16 where it multiplies bf16 natively and bf16 measures faster there
    # (mlcl.engine.optim.cpu_bf16_is_faster), else off
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    ema: float = ranged(0.0, "[0, 1)")  # EMA decay of the weights evaluated alongside (0 = no EMA)
    ema_warmup: bool = False  # let the EMA decay grow towards `ema` (timm's warm-up; short runs)
    compile: bool = False  # torch.compile the training forward
    # torch.compile's mode, with run.compile. reduce-overhead replays the step as CUDA graphs
    # (far fewer kernel launches, for small batches or models), which needs static shapes: the
    # training loader drops its last incomplete batch, and evaluation, whose last batch is
    # smaller, calls method.inference, which is not compiled. max-autotune also uses CUDA
    # graphs and searches for faster kernels (long compiles); max-autotune-no-cudagraphs does
    # only the search.
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = "default"
    channels_last: bool = True
    sync_bn: bool = False  # distributed on GPUs: BatchNorm statistics over the global batch
    threshold: float = ranged(0.5, "(0, 1)")  # for CP / CR / CF1 / OP / OR / OF1
    # Stop after this many epochs without a better mAP (0 = off)
    early_stop: int = ranged(0, ">= 0")
    max_bad_steps: int = ranged(3, "> 0")  # stop the run after this many non-finite losses in a row
    progress: bool = True
    checkpoint: bool = True  # write checkpoint_last.pt / checkpoint_best.pt
    # Also write checkpoint_last.pt every this many iterations (0 = off)
    checkpoint_every: int = ranged(0, ">= 0")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # The method's options as written (plain data); `mlcl.methods.method_options` types them.
    method: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    def hash(self) -> str:
        """Short hash of the configuration, stable across key order."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


SECTIONS = ("data", "model", "optim", "run", "method")


def list_presets() -> list[str]:
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


def describe_preset(name: str) -> str:
    """The one-line description of a preset: the first comment line of its YAML file."""
    for line in _locate(name).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def load_config(
    preset_or_path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Build a configuration from defaults, a preset name or YAML path, and overrides.

    ``overrides`` are ``"section.key=value"`` strings (values parsed as YAML) or a mapping of
    dotted keys to values. An unknown key or a value of the wrong type raises ``ConfigError``
    naming the key.
    """
    raw: dict[str, Any] = {}
    if preset_or_path:
        raw = _read_with_bases(preset_or_path, seen=())
    for key, value in _parse_overrides(overrides):
        _set_dotted(raw, key, value)
    return from_dict(raw)


def from_dict(raw: dict[str, Any]) -> Config:
    """Typed ``Config`` from nested plain data (as read from YAML). The ``method`` section is
    kept as written; :func:`mlcl.methods.method_options` checks it."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a configuration must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section (known: {', '.join(SECTIONS)})")
    # An empty section in YAML (`run:` with nothing under it) reads as None.
    method = raw.get("method") or {}
    if not isinstance(method, dict):
        raise ConfigError(f"method: must be a mapping, got {method!r}")
    return Config(
        data=build_section(DataConfig, raw.get("data") or {}, "data"),
        model=build_section(ModelConfig, raw.get("model") or {}, "model"),
        optim=build_section(OptimConfig, raw.get("optim") or {}, "optim"),
        run=build_section(RunConfig, raw.get("run") or {}, "run"),
        method=to_plain(method),
    )


def with_overrides(config: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """A copy of ``config`` with ``overrides`` applied (same forms as ``load_config``)."""
    raw = config.to_dict()
    parsed = _parse_overrides(overrides)
    if any(key == "model.method" and value != config.model.method for key, value in parsed):
        raw["method"] = {}  # the old method's options do not apply to the new one
    for key, value in parsed:
        _set_dotted(raw, key, value)
    return from_dict(raw)


def build_section(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """The dataclass ``cls`` from a section's plain ``values``, every value checked against its
    field's type and range; ``ConfigError`` names ``prefix.key``, what was expected and the
    value. Integers stand for floats and lists for tuples, as YAML writes them; nothing else is
    converted."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix}: must be a mapping, got {values!r}")
    fields = {spec.name: spec for spec in dataclasses.fields(cls)}
    for name, value in values.items():
        if name not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"{prefix}.{name}: unknown key (known: {known})")
        try:
            json.dumps(value)
        except (TypeError, ValueError):  # a YAML date, say: pydantic reads JSON text below
            raise ConfigError(f"{prefix}.{name}: {value!r} is not a plain YAML value") from None
    # JSON input, strict: the lax mode would read "3" as 3 and 1 as true.
    try:
        section = _adapter(cls).validate_json(json.dumps(values), strict=True)
    except pydantic.ValidationError as err:
        raise ConfigError(_type_error(cls, prefix, values, err.errors()[0])) from None
    for name, written in values.items():
        _check_range(getattr(section, name), fields[name], f"{prefix}.{name}", written)
    return section


def to_plain(obj: Any) -> Any:
    """Dataclasses as dicts and tuples as lists, as YAML and JSON write them."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------- helpers


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2 booleans and floats: ``off`` / ``no`` stay strings (``run.amp: off``) and
    ``1e-4`` is a number (PyYAML follows YAML 1.1, where it is the reverse)."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_YamlLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"""^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader: plain data only


def _read_with_bases(preset_or_path: str | Path, seen: tuple[str, ...]) -> dict[str, Any]:
    path = _locate(preset_or_path)
    if str(path) in seen:
        raise ConfigError(f"{path}: 'base' presets form a cycle")
    try:
        raw = _load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a configuration is YAML text)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(err)})") from None
    if raw is None:  # an empty file, or comments only: more likely a mistake than "defaults"
        raise ConfigError(f"{path}: empty configuration file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a configuration must be a mapping")
    base = raw.pop("base", None)
    if base is None:
        return raw
    merged = _read_with_bases(base, (*seen, str(path)))
    _deep_update(merged, raw)
    return merged


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: what is wrong, and where."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"{err.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(err).split())


def _locate(preset_or_path: str | Path) -> Path:
    path = Path(preset_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found")
        return path
    preset = PRESET_DIR / f"{preset_or_path}.yaml"
    if not preset.is_file():
        raise ConfigError(
            f"{preset_or_path}: no such preset or YAML file (presets: {', '.join(list_presets())})"
        )
    return preset


def _deep_update(target: dict[str, Any], source: dict[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def _parse_overrides(overrides: list[str] | dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not overrides:
        return []
    if isinstance(overrides, dict):
        return list(overrides.items())
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{item!r}: an override reads section.key=value")
        try:
            value = _load_yaml(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        parsed.append((key.strip(), value))
    return parsed


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) != 2:
        raise ConfigError(f"{key}: keys are written section.key (sections: {', '.join(SECTIONS)})")
    section, name = parts
    if section not in SECTIONS:
        raise ConfigError(f"{key}: unknown section {section!r} (known: {', '.join(SECTIONS)})")
    node = raw.setdefault(section, {})
    if not isinstance(node, dict):
        raise ConfigError(f"{section}: must be a mapping")
    node[name] = value


def _check_range(value: Any, spec: dataclasses.Field, key: str, written: Any) -> None:
    """``ConfigError`` naming ``key`` and the value as ``written`` when ``value`` (each value of a
    tuple) lies outside the field's :func:`ranged` range."""
    allowed = spec.metadata.get("range")
    if allowed is None:
        return
    values = value if isinstance(value, tuple) else (value,)
    if not all(item in allowed for item in values):
        raise ConfigError(f"{key}: must be {allowed.text}, got {written!r}")


@functools.cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(cls)


_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _type_error(cls: type, prefix: str, values: dict[str, Any], error: dict[str, Any]) -> str:
    """One line for pydantic's first ``error``: the key, what its type expects, the value."""
    name, *where = error["loc"]
    key, hint = f"{prefix}.{name}", typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) is tuple:
        arity = len(typing.get_args(hint))
        if not where or error["type"] in ("missing", "too_long"):
            return f"{key}: expected {arity} values, got {values[name]!r}"
        hint = typing.get_args(hint)[where[0]]  # one element of the tuple is wrong
    value = error["input"]
    if typing.get_origin(hint) is Literal:
        return f"{key}: {value!r} is not one of {', '.join(map(str, typing.get_args(hint)))}"
    if hint in _EXPECTED:
        return f"{key}: expected {_EXPECTED[hint]}, got {value!r}"
    return f"{key}: {error['msg']}, got {value!r}"
