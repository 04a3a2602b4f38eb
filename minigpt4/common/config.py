"""Load a FaceGPT/MiniGPT-4 YAML plus ``--options`` into the typed schema, reporting every problem at once.

Merge order (upstream's): the model preset's default YAML (chosen by ``model.arch`` + ``model.model_type``),
each dataset builder's default YAML, the user YAML, then ``--options``. The schema classes in
:mod:`minigpt4.common.schema` (and the subclasses components declare as ``config_schema``) are the only place
defaults live. Validation collects all problems — unknown keys (with the closest known key), wrong types,
required values left unset, paths that do not exist, unknown registry names — and raises one
:class:`ConfigError` that lists each with its key path, the offending value and the ``--options`` line that
fixes it. ``${oc.env:VAR,default}`` interpolations work anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from minigpt4.common.checkpoint_config import merge_checkpoint_model
from minigpt4.common.errors import UserError
from minigpt4.common.logger import get_logger
from minigpt4.common.registry import RegistryError, closest, registry
from minigpt4.common.schema import (
    DatasetConfig,
    ModelConfig,
    PreprocessConfig,
    ProcessorConfig,
    RunConfig,
)

logger = get_logger(__name__)

LIBRARY_ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL_KEYS = ("model", "datasets", "run", "preprocess", "evaluation_datasets")
#: Placeholders that upstream's YAMLs (prose) and FaceGPT's presets (``???``) use for paths the user must fill in.
PLACEHOLDER_PREFIXES = ("please set", "/path/to", "???")


def is_placeholder(value: Any) -> bool:
    """True for a value that stands in for a path the user has not set yet."""
    return isinstance(value, str) and value.strip().lower().startswith(PLACEHOLDER_PREFIXES)


def resolve_library_path(path: str | Path) -> Path:
    """A relative path as given (from the working directory) or, failing that, under the ``minigpt4/`` folder
    (where upstream's ``prompts/...`` files live)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    in_library = LIBRARY_ROOT / candidate
    return in_library if in_library.exists() else candidate


# ----------------------------------------------------------------------------------- problems


@dataclass
class ConfigProblem:
    """One thing wrong with a config."""

    key: str
    message: str
    value: Any = None
    fix: Optional[str] = None

    def __str__(self) -> str:
        text = f"{self.key}: {self.message}"
        if self.fix:
            text += f"\n      fix: --options {self.fix}"
        return text


class ConfigError(UserError, ValueError):
    """Every problem found in a config, listed together (a user error: exit status 2 at every entry point)."""

    def __init__(self, problems: List[ConfigProblem], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        lines = [f"{len(problems)} problem(s) in {source}:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))

    def one_line(self) -> str:
        """``N problem(s) in FILE: key: message (fix: --options ...); ...``"""
        parts = [f"{p.key}: {' '.join(p.message.split())}" + (f" (fix: --options {p.fix})" if p.fix else "")
                 for p in self.problems]
        return f"{len(self.problems)} problem(s) in {self.source}: " + "; ".join(parts)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_unset(value: Any) -> bool:
    if value is None or value == MISSING:
        return True
    return isinstance(value, str) and (value.strip() == "" or is_placeholder(value))


# ------------------------------------------------------------------------------------ options


def parse_options(options: Optional[Sequence[str]]) -> DictConfig:
    """``--options`` as a DictConfig; accepts ``a.b=1 c=2`` and upstream's alternating ``a.b 1 c 2``."""
    options = list(options or [])
    if not options:
        return OmegaConf.create({})
    if "=" in options[0]:
        bad = [o for o in options if "=" not in o]
        if bad:
            raise ConfigError(
                [ConfigProblem("--options", f"mixes 'key=value' and bare items: {bad}", fix="key1=value1 key2=value2")],
                "--options",
            )
        dotlist = options
    else:
        if len(options) % 2:
            raise ConfigError(
                [ConfigProblem("--options", f"alternating form needs key value pairs; got {len(options)} items",
                               fix="key1 value1 key2 value2  (or key1=value1 key2=value2)")],
                "--options",
            )
        dotlist = [f"{k}={v}" for k, v in zip(options[::2], options[1::2])]
    problems = [p for p in (_option_problem(item) for item in dotlist) if p is not None]
    if problems:
        raise ConfigError(problems, "--options")
    return OmegaConf.from_dotlist(dotlist)


def _option_problem(item: str) -> Optional[ConfigProblem]:
    """Why one ``key=value`` item of ``--options`` cannot be read (its value is YAML), or None."""
    key, _, value = item.partition("=")
    try:
        OmegaConf.from_dotlist([item])
        return None
    except Exception as err:  # yaml.YAMLError, OmegaConf errors, ValueError of a YAML tag such as !!int
        reason = _yaml_reason(err)
    return ConfigProblem(repr(item), f"the value of {key} is not valid YAML: {reason}", value,
                         f"{key}='{value}' (quoted: taken as text), or correct the YAML (close brackets and quotes)")


def _yaml_reason(err: Exception) -> str:
    """The useful part of a YAML parser message (its 'in <unicode string>' position lines dropped)."""
    problem = getattr(err, "problem", None)  # yaml.MarkedYAMLError
    if problem:
        mark = getattr(err, "problem_mark", None)
        return f"{problem} (at character {mark.column + 1} of the value)" if mark is not None else str(problem)
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and "<unicode string>" not in ln]
    return "; ".join(lines[:2]) or type(err).__name__


# ------------------------------------------------------------------------------- schema walk


def _field_type_name(f: dataclasses.Field) -> str:
    return str(f.type).replace("typing.", "").replace("Optional[", "").rstrip("]") if "Optional[" in str(f.type) \
        else str(f.type).replace("typing.", "")


def _nested_schema(f: dataclasses.Field) -> Optional[Type]:
    """The dataclass type of a field whose default is a dataclass instance, else None."""
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        sample = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(sample):
            return type(sample)
    return None


class _Validator:
    """Walks plain-container config data against schema dataclasses, collecting problems."""

    def __init__(self, check_paths: bool) -> None:
        self.problems: List[ConfigProblem] = []
        self.check_paths = check_paths

    def add(self, key: str, message: str, value: Any = None, fix: Optional[str] = None) -> None:
        self.problems.append(ConfigProblem(key, message, value, fix))

    def check(self, schema: Type, data: Any, prefix: str) -> None:
        """Check ``data`` (a dict) against dataclass ``schema``; ``prefix`` is its dotted key path."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.add(prefix, f"expected a mapping of {schema.__name__} keys, got {_show(data)}")
            return
        fields = {f.name: f for f in dataclasses.fields(schema)}
        for key in data:
            if key not in fields:
                hint = closest(str(key), list(fields))
                msg = f"unknown key (value {_show(data[key])}) for {schema.__name__}."
                fix = None
                if hint:
                    msg += f" Did you mean {hint!r}?"
                    fix = f"{prefix}.{hint}={_cli_value(data[key])}"
                self.add(f"{prefix}.{key}", msg, data[key], fix)
        streamed = "shards" in fields and not _is_unset(data.get("shards"))  # a shard-backed build_info
        for name, f in fields.items():
            if streamed and f.metadata.get("path"):
                continue  # ann_path / image_path are not read when the data streams from shards
            self.check_field(schema, f, data.get(name, _ABSENT), f"{prefix}.{name}")

    def check_field(self, schema: Type, f: dataclasses.Field, value: Any, key: str) -> None:
        """Check one field: required/unset, nested schema, type, choices, registry name, path on disk."""
        meta = f.metadata
        nested = _nested_schema(f)
        if nested is not None:
            self.check(nested, {} if value is _ABSENT else value, key)
            return
        default = None if f.default is dataclasses.MISSING else f.default
        effective = default if value is _ABSENT else value
        required = bool(meta.get("required")) or default == MISSING
        empty_list = isinstance(effective, (list, tuple)) and not effective
        if effective == MISSING or (required and (_is_unset(effective) or empty_list)):
            what = meta.get("help") or _field_type_name(f)
            placeholder = "/path/to/..." if meta.get("path") else f"<{_field_type_name(f)}>"
            self.add(key, f"required value is not set (value {_show(effective)}); expected: {what}",
                     effective, f"{key}={placeholder}")
            return
        if value is not _ABSENT:
            self.check_type(schema, f, value, key)
        if "choices" in meta and effective not in meta["choices"]:
            hint = closest(str(effective), [str(c) for c in meta["choices"]])
            self.add(key, f"{_show(effective)} is not one of {meta['choices']}"
                     + (f"; did you mean {hint!r}?" if hint else ""), effective,
                     f"{key}={hint or meta['choices'][0]}")
        if "registry" in meta and isinstance(effective, str):
            self.check_registry(meta["registry"], effective, key)
        if meta.get("path") and self.check_paths and not _is_unset(effective):
            self.check_path_value(meta, effective, key)

    def check_path_value(self, meta: Any, value: Any, key: str) -> None:
        """One path, or each path of a list (fields with ``many``); then the field's own ``check`` of the file."""
        many = bool(meta.get("many")) and isinstance(value, (list, tuple))
        items = [(f"{key}[{i}]", v) for i, v in enumerate(value)] if many else [(key, value)]
        fix = f"{key}=[/path/to/a.json,/path/to/b.json]" if many else f"{key}=/path/to/..."
        for item_key, item in items:
            if not isinstance(item, str) or _is_unset(item):
                self.add(item_key, f"expected a path, got {_show(item)}", item, fix)
            elif self.check_path(meta["path"], item, item_key, meta.get("help", ""), many) and meta.get("check"):
                problem = meta["check"](str(resolve_library_path(item)))
                if problem:  # the message says what belongs there
                    self.add(item_key, problem, item)

    def check_type(self, schema: Type, f: dataclasses.Field, value: Any, key: str) -> None:
        """Let OmegaConf convert the value into the field's declared type; report what it refuses."""
        try:
            OmegaConf.merge(OmegaConf.structured(_single_field_schema(schema, f)), {f.name: value})
        except OmegaConfBaseException:
            self.add(key, f"wrong type: {_show(value)} is not a valid {_field_type_name(f)}", value,
                     f"{key}=<{_field_type_name(f)}>")

    def check_registry(self, kind: str, name: str, key: str) -> None:
        try:
            registry.get(kind, name)
        except RegistryError as err:
            hint = closest(name, registry.names(kind))
            self.add(key, str(err), name, f"{key}={hint}" if hint else None)

    def check_path(self, kind: str, value: str, key: str, what: str, in_list: bool = False) -> bool:
        """A path exists when it does as given (relative: to the working directory) or, like upstream's
        ``prompts/...`` files, relative to the ``minigpt4/`` package folder. Returns whether it does.
        ``in_list``: ``key`` is ``name[i]``, one item of a list of paths."""
        exists = Path.is_file if kind == "file" else Path.is_dir if kind == "dir" else Path.exists
        ok = exists(resolve_library_path(value))
        if not ok:
            noun = {"file": "file", "dir": "folder"}.get(kind, "file or folder")
            word = noun.split()[0]
            fix = (f"{key.split('[')[0]}=[/path/to/{word}1,/path/to/{word}2]" if in_list
                   else f"{key}=/path/to/existing/{word}")
            self.add(key, f"{noun} does not exist: {value}" + (f" (expected: {what})" if what else ""), value, fix)
        return ok


_ABSENT = object()
_SINGLE_FIELD_CACHE: Dict[Tuple[Type, str], Type] = {}


def _single_field_schema(schema: Type, f: dataclasses.Field) -> Type:
    """A one-field dataclass with ``f``'s type, so one value can be type-checked on its own."""
    key = (schema, f.name)
    if key not in _SINGLE_FIELD_CACHE:
        real_type = typing.get_type_hints(schema)[f.name]
        _SINGLE_FIELD_CACHE[key] = dataclasses.make_dataclass(
            f"_Check_{schema.__name__}_{f.name}", [(f.name, real_type, dataclasses.field(default=MISSING))]
        )
    return _SINGLE_FIELD_CACHE[key]


def _cli_value(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


# ------------------------------------------------------------------------------ components


def _load_yaml(path: Path, what: str) -> DictConfig:
    if not path.is_file():
        raise ConfigError([ConfigProblem(what, f"YAML file not found: {path}")], str(path))
    try:
        return OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and OmegaConf errors carry line/column
        raise ConfigError([ConfigProblem(what, f"cannot parse {path}: {err}")], str(path)) from err


def _schema_of(cls: Any, base: Type) -> Type:
    schema = getattr(cls, "config_schema", None) or base
    if not (dataclasses.is_dataclass(schema) and issubclass(schema, base)):
        raise TypeError(f"{cls.__name__}.config_schema must be a dataclass subclassing {base.__name__}")
    return schema


def _model_defaults(raw: DictConfig, v: _Validator) -> Tuple[Optional[Type], DictConfig]:
    """Schema class and preset default YAML of the model section (empty config when unknown)."""
    model = raw.get("model")
    if model is None:
        v.add("model", "missing section; a config needs model.arch and model.model_type",
              fix="model.arch=minigpt_v2 model.model_type=pretrain")
        return None, OmegaConf.create({})
    arch = model.get("arch")
    if _is_unset(arch):
        v.add("model.arch", f"required value is not set; known: {registry.names('model')}", arch,
              "model.arch=minigpt_v2")
        return None, OmegaConf.create({})
    try:
        cls = registry.get_model_class(arch)
    except RegistryError as err:
        hint = closest(str(arch), registry.names("model"))
        v.add("model.arch", str(err), arch, f"model.arch={hint}" if hint else None)
        return None, OmegaConf.create({})
    schema = _schema_of(cls, ModelConfig)
    presets: Dict[str, str] = getattr(cls, "PRETRAINED_MODEL_CONFIG_DICT", {})
    model_type = model.get("model_type")
    if _is_unset(model_type) and presets:
        model_type = next(iter(presets))  # the arch's first preset: upstream's (pretrain, pretrain_vicuna0)
        logger.info("model.model_type not set: using %s's default preset %r", arch, model_type)
        model.model_type = model_type
    if _is_unset(model_type):
        v.add("model.model_type", f"required value is not set; {arch} presets: {sorted(presets)}", model_type,
              f"model.model_type={sorted(presets)[0] if presets else 'pretrain'}")
        return schema, OmegaConf.create({})
    if model_type not in presets:
        hint = closest(str(model_type), list(presets))
        v.add("model.model_type", f"unknown preset {model_type!r} for {arch}; known: {sorted(presets)}"
              + (f". Did you mean {hint!r}?" if hint else ""), model_type,
              f"model.model_type={hint or sorted(presets)[0]}")
        return schema, OmegaConf.create({})
    return schema, _load_yaml(LIBRARY_ROOT / presets[model_type], f"{arch} preset {model_type}")


def _dataset_defaults(raw: DictConfig, v: _Validator) -> Tuple[Dict[str, Type], DictConfig]:
    """Per-dataset schema classes and the merged default YAML sections of every named builder."""
    schemas: Dict[str, Type] = {}
    defaults = OmegaConf.create({"datasets": {}})
    datasets = raw.get("datasets")
    if datasets is None:
        return schemas, defaults
    if not isinstance(datasets, DictConfig):
        v.add("datasets", f"expected a mapping of dataset name → settings, got {_show(datasets)}")
        return schemas, defaults
    for name in datasets:
        try:
            cls = registry.get_builder_class(str(name))
        except RegistryError as err:
            hint = closest(str(name), registry.names("builder") + list(registry.aliases("builder")))
            v.add(f"datasets.{name}", str(err), name, None if hint is None else f"(rename the YAML key to {hint})")
            continue
        schemas[str(name)] = _schema_of(cls, DatasetConfig)
        entry = datasets[name] or {}
        dtype = entry.get("type", "default") if isinstance(entry, DictConfig) else "default"
        files: Dict[str, str] = getattr(cls, "DATASET_CONFIG_DICT", {})
        if not files:
            continue
        if dtype not in files:
            v.add(f"datasets.{name}.type", f"unknown type {dtype!r}; known: {sorted(files)}", dtype,
                  f"datasets.{name}.type={sorted(files)[0]}")
            continue
        loaded = _load_yaml(LIBRARY_ROOT / files[dtype], f"defaults of dataset {name}")
        section = loaded.get("datasets") or {}
        first = next(iter(section.values()), None) if len(section) else None
        if first is not None:
            defaults.datasets[name] = first
    return schemas, defaults


def _check_processors(pair: Any, prefix: str, v: _Validator) -> None:
    """Validate ``{train: {name: ...}, eval: {...}}`` processor entries against each processor's schema."""
    if pair is None:
        return
    if not isinstance(pair, dict):
        v.add(prefix, f"expected {{train: {{name: ...}}, eval: {{...}}}}, got {_show(pair)}")
        return
    for split, entry in pair.items():
        key = f"{prefix}.{split}"
        if split not in ("train", "eval"):
            hint = closest(str(split), ["train", "eval"])
            v.add(key, "unknown processor split (use train or eval)" + (f"; did you mean {hint!r}?" if hint else ""))
            continue
        if entry is None:
            continue
        if not isinstance(entry, dict) or "name" not in entry:
            v.add(key, f"a processor entry needs a name, got {_show(entry)}", entry, f"{key}.name=blip2_image_eval")
            continue
        try:
            cls = registry.get_processor_class(entry["name"])
        except RegistryError as err:
            hint = closest(str(entry["name"]), registry.names("processor"))
            v.add(f"{key}.name", str(err), entry["name"], f"{key}.name={hint}" if hint else None)
            continue
        v.check(_schema_of(cls, ProcessorConfig), entry, key)


# ------------------------------------------------------------------------------------ Config


class Config:
    """A validated config: typed ``model``, ``datasets``, ``run``, ``preprocess`` sections.

    Upstream's accessors (``model_cfg``, ``datasets_cfg``, ``run_cfg``, ``get_config()``, ``to_dict()``,
    ``pretty_print()``) are kept for ported code, and so is upstream's constructor ``Config(args)`` (``args`` with
    ``cfg_path`` and ``options``: loaded as :func:`load_config` does, dataset folders not checked, as the chat
    front ends load).
    """

    def __init__(self, root: Any, source: str = "config") -> None:
        if hasattr(root, "cfg_path"):  # upstream's ``Config(args)``: an argparse namespace with cfg_path / options
            loaded = load_config(root.cfg_path, getattr(root, "options", None), check_dataset_paths=False)
            root, source = loaded.config, loaded.source
        self.config = root
        self.source = source

    # sections -----------------------------------------------------------------------------
    @property
    def model(self) -> DictConfig:
        return self.config.model

    @property
    def datasets(self) -> DictConfig:
        return self.config.datasets

    @property
    def run(self) -> DictConfig:
        return self.config.run

    @property
    def preprocess(self) -> DictConfig:
        return self.config.preprocess

    @property
    def evaluation_datasets(self) -> DictConfig:
        return self.config.evaluation_datasets

    model_cfg = model
    datasets_cfg = datasets
    run_cfg = run
    evaluation_datasets_cfg = evaluation_datasets

    def get_config(self) -> DictConfig:
        return self.config

    # output -------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """Plain, fully resolved containers."""
        return OmegaConf.to_container(self.config, resolve=True)  # type: ignore[return-value]

    def to_yaml(self, path: Optional[Path | str] = None) -> str:
        """The resolved config as YAML (written to ``path`` when given)."""
        text = OmegaConf.to_yaml(self.config, resolve=True)
        if path is not None:
            Path(path).write_text(text)
        return text

    def pretty_print(self) -> None:
        """Log the run, datasets and model sections."""
        for section in ("run", "datasets", "model"):
            logger.info("%s:\n%s", section, OmegaConf.to_yaml(self.config[section], resolve=True))


def _typed(schema: Type, data: Any) -> DictConfig:
    node = OmegaConf.structured(schema)
    return OmegaConf.merge(node, data or {})


def load_config(
    cfg_path: Optional[str | Path],
    options: Optional[Sequence[str]] = None,
    *,
    check_paths: bool = True,
    check_dataset_paths: Optional[bool] = None,
    checkpoint_config: Optional[bool] = None,
) -> Config:
    """Load, merge and validate; raises :class:`ConfigError` listing every problem.

    When ``model.ckpt`` names a FaceGPT checkpoint, the model section saved in it sits between the preset and the
    YAML (preset < checkpoint < YAML < ``--options``); a YAML or ``--options`` value that contradicts it is a
    problem naming both values (see :mod:`minigpt4.common.checkpoint_config`).

    Args:
        cfg_path: the user YAML (``--cfg-path``); None starts from an empty config.
        options: ``--options`` items, either ``a.b=c`` or alternating ``a.b c``.
        check_paths: check that path values exist on disk (off for schema-only checks).
        check_dataset_paths: the same for the ``datasets`` section only (default: ``check_paths``); chat front
            ends turn it off, since upstream's eval YAMLs carry a dataset block they never read.
        checkpoint_config: read the saved model section of ``model.ckpt``. Default: on for chat and evaluation
            configs (``check_dataset_paths=False``, or no ``datasets`` section), off for training configs (a run
            that starts from a FaceGPT checkpoint may change its settings); evaluation tools pass True.
    """
    source = str(cfg_path) if cfg_path else "--options"
    user = _load_yaml(Path(cfg_path), "--cfg-path") if cfg_path else OmegaConf.create({})
    opts = parse_options(options)
    raw = OmegaConf.merge(user, opts)
    v = _Validator(check_paths)
    if checkpoint_config is None:
        checkpoint_config = check_dataset_paths is False or not raw.get("datasets")
    if checkpoint_config:
        raw, contradictions = merge_checkpoint_model(raw, [(source if cfg_path else "--cfg-path", user),
                                                           ("--options", opts)])
        for key, message, fix in contradictions:
            v.add(key, message, None, fix)
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            hint = closest(str(key), list(TOP_LEVEL_KEYS))
            v.add(str(key), "unknown top-level section" + (f"; did you mean {hint!r}?" if hint else "")
                  + f" (known: {', '.join(TOP_LEVEL_KEYS)})", None)
    model_schema, model_defaults = _model_defaults(raw, v)
    dataset_schemas, dataset_defaults = _dataset_defaults(raw, v)
    merged = OmegaConf.merge(model_defaults, dataset_defaults, raw)
    try:
        data: Dict[str, Any] = OmegaConf.to_container(merged, resolve=True)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        v.add(getattr(err, "full_key", None) or "interpolation", f"cannot resolve: {str(err).splitlines()[0]}")
        raise ConfigError(v.problems, source) from err

    if model_schema is not None:
        v.check(model_schema, data.get("model"), "model")
    v.check_paths = check_paths if check_dataset_paths is None else check_dataset_paths
    for name, schema in dataset_schemas.items():
        entry = (data.get("datasets") or {}).get(name) or {}
        v.check(schema, entry, f"datasets.{name}")
        if isinstance(entry, dict):
            for proc in ("vis_processor", "text_processor"):
                _check_processors(entry.get(proc), f"datasets.{name}.{proc}", v)
    v.check_paths = check_paths
    v.check(RunConfig, data.get("run"), "run")
    preprocess = data.get("preprocess") or {}
    v.check(PreprocessConfig, preprocess, "preprocess")
    if isinstance(preprocess, dict):
        for proc in ("vis_processor", "text_processor"):
            _check_processors(preprocess.get(proc), f"preprocess.{proc}", v)
    if v.problems:
        raise ConfigError(v.problems, source)

    root = OmegaConf.create(
        {
            "model": _typed(model_schema, data.get("model")),
            "datasets": {n: _typed(s, data["datasets"][n]) for n, s in dataset_schemas.items()},
            "run": _typed(RunConfig, data.get("run")),
            "preprocess": _typed(PreprocessConfig, preprocess),
            "evaluation_datasets": data.get("evaluation_datasets") or {},
        }
    )
    return Config(root, source)


def add_config_args(parser: argparse.ArgumentParser, require_cfg: bool = True) -> argparse.ArgumentParser:
    """Add upstream's ``--cfg-path`` and ``--options`` arguments to an entry script's parser."""
    parser.add_argument("--cfg-path", required=require_cfg, help="path to the YAML config")
    parser.add_argument(
        "--options",
        nargs="+",
        default=None,
        help="override config values: 'a.b=c d=e' (or upstream's alternating 'a.b c d e')",
    )
    return parser
