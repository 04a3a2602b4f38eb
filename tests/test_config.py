"""Config loading: merge order, both --options forms, env interpolation, and every kind of error at once.

Components are registered here under test-only names (and removed afterwards) so each rule is checked in
isolation; tests/test_shipped_configs.py runs every shipped YAML through the real components.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from minigpt4.common.config import Config, ConfigError, load_config, parse_options
from minigpt4.common.registry import registry
from minigpt4.common.schema import DatasetConfig, ModelConfig, ProcessorConfig, path_field


@dataclass
class _BuildInfo:
    ann_path: str = path_field("???", "file", required=True, help="annotation JSON")
    image_root: str = path_field("", "dir", help="image folder")


@dataclass
class _SetConfig(DatasetConfig):
    build_info: _BuildInfo = field(default_factory=_BuildInfo)
    sections: list = field(default_factory=list)


@dataclass
class _ProcConfig(ProcessorConfig):
    image_size: int = 224


@pytest.fixture()
def components(tmp_path: Path) -> Iterator[Path]:
    """Register a model (with a preset YAML), a builder (with defaults) and a processor for one test."""
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump({
        "model": {"arch": "cfgtest_model", "image_size": 448, "max_txt_len": 100, "end_sym": "</s>"},
        "preprocess": {"vis_processor": {"eval": {"name": "cfgtest_proc", "image_size": 448}}},
    }))
    set_defaults = tmp_path / "set.yaml"
    set_defaults.write_text(yaml.safe_dump({"datasets": {"anything": {"batch_size": 3, "sample_ratio": 7}}}))

    model_cls = type("CfgTestModel", (), {"config_schema": ModelConfig,
                                          "PRETRAINED_MODEL_CONFIG_DICT": {"preset": str(preset)}})
    builder_cls = type("CfgTestBuilder", (), {"config_schema": _SetConfig,
                                              "DATASET_CONFIG_DICT": {"default": str(set_defaults)}})
    proc_cls = type("CfgTestProc", (), {"config_schema": _ProcConfig})
    registry.register_model("cfgtest_model")(model_cls)
    registry.register_builder("cfgtest_set", aliases=("cfgtest_alias",))(builder_cls)
    registry.register_processor("cfgtest_proc")(proc_cls)
    try:
        yield tmp_path
    finally:
        registry.unregister("model", "cfgtest_model")
        registry.unregister("builder", "cfgtest_set")
        registry.unregister("processor", "cfgtest_proc")


def _write(tmp: Path, data: dict) -> Path:
    path = tmp / "user.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _base(tmp: Path) -> dict:
    (tmp / "llama").mkdir(exist_ok=True)
    ann = tmp / "ann.json"
    ann.write_text("[]")
    return {
        "model": {"arch": "cfgtest_model", "model_type": "preset", "llama_model": str(tmp / "llama")},
        "datasets": {"cfgtest_set": {"build_info": {"ann_path": str(ann)},
                                     "vis_processor": {"train": {"name": "cfgtest_proc", "image_size": 448}}}},
        "run": {"task": "cfgtest_task", "runner": "cfgtest_runner", "lr_sched": "cfgtest_sched"},
    }


_RUN_PARTS = (("task", "cfgtest_task"), ("runner", "cfgtest_runner"), ("lr_scheduler", "cfgtest_sched"))


@pytest.fixture()
def task_registered() -> Iterator[None]:
    """A task, runner and LR scheduler under test names (the run section names them)."""
    for kind, name in _RUN_PARTS:
        registry._register(kind, name, type(name, (), {}))
    yield
    for kind, name in _RUN_PARTS:
        registry.unregister(kind, name)


pytestmark = pytest.mark.usefixtures("task_registered")


def _problems(err: pytest.ExceptionInfo) -> dict:
    return {p.key: p for p in err.value.problems}


def test_merge_order_preset_then_dataset_defaults_then_yaml_then_options(components: Path) -> None:
    data = _base(components)
    data["model"]["max_txt_len"] = 200
    cfg = load_config(_write(components, data), ["model.max_txt_len=300", "datasets.cfgtest_set.batch_size=5"])
    assert cfg.model.image_size == 448  # preset default
    assert cfg.model.end_sym == "</s>"  # preset default over the schema's "\n"
    assert cfg.model.max_txt_len == 300  # --options over the YAML's 200 over the preset's 100
    assert cfg.model.lora_alpha == 16  # schema default
    assert cfg.datasets.cfgtest_set.sample_ratio == 7  # builder default YAML
    assert cfg.datasets.cfgtest_set.batch_size == 5  # --options over the builder default 3
    assert cfg.preprocess.vis_processor.eval.image_size == 448  # preset's preprocess section
    assert cfg.run.task == "cfgtest_task" and cfg.run.accum_grad_iters == 1
    assert cfg.model_cfg is not None and cfg.run_cfg.task == "cfgtest_task"  # upstream accessors


def test_options_in_both_forms_give_the_same_config(components: Path) -> None:
    path = _write(components, _base(components))
    a = load_config(path, ["run.init_lr=3e-5", "model.lora_r=8"])
    b = load_config(path, ["run.init_lr", "3e-5", "model.lora_r", "8"])
    assert a.run.init_lr == b.run.init_lr == pytest.approx(3e-5)
    assert a.model.lora_r == b.model.lora_r == 8


def test_upstream_config_args_constructor_loads_like_load_config(components: Path) -> None:
    """Ported upstream code builds ``Config(args)`` from an argparse namespace; it must equal ``load_config``."""
    import argparse

    path = _write(components, _base(components))
    args = argparse.Namespace(cfg_path=str(path), options=["model.lora_r", "8"])
    cfg = Config(args)
    assert cfg.to_dict() == load_config(path, ["model.lora_r=8"], check_dataset_paths=False).to_dict()
    assert cfg.model_cfg.lora_r == 8 and cfg.source == str(path)


def test_malformed_options_are_reported() -> None:
    with pytest.raises(ConfigError, match="alternating form needs key value pairs"):
        parse_options(["run.init_lr", "1", "model.lora_r"])
    with pytest.raises(ConfigError, match="mixes 'key=value' and bare items"):
        parse_options(["run.init_lr=1", "model.lora_r", "2"])


def test_yaml_syntax_error_in_options_names_each_bad_item() -> None:
    with pytest.raises(ConfigError) as err:
        parse_options(["run.init_lr=1e-4", "model.lora_target_modules=[q_proj, v_proj", "run.job_name=a: b: c"])
    problems = err.value.problems
    assert [p.key for p in problems] == ["'model.lora_target_modules=[q_proj, v_proj'", "'run.job_name=a: b: c'"]
    assert problems[0].message.startswith("the value of model.lora_target_modules is not valid YAML: did not find "
                                          "expected ',' or ']'")
    assert problems[0].fix.startswith("model.lora_target_modules='[q_proj, v_proj' (quoted: taken as text)")
    assert "mapping values are not allowed" in problems[1].message
    line = err.value.one_line()
    assert "\n" not in line and line.startswith("2 problem(s) in --options: 'model.lora_target_modules=[q_proj")
    # the same item in upstream's alternating form
    with pytest.raises(ConfigError, match="the value of run.job_name is not valid YAML"):
        parse_options(["run.job_name", "{x: 1"])


def test_misspelt_key_reports_path_value_close_match_and_fix(components: Path) -> None:
    data = _base(components)
    data["model"]["lora_alpah"] = 32
    with pytest.raises(ConfigError) as err:
        load_config(_write(components, data))
    p = _problems(err)["model.lora_alpah"]
    assert "unknown key (value 32)" in p.message and "Did you mean 'lora_alpha'?" in p.message
    assert p.fix == "model.lora_alpha=32"
    assert "fix: --options model.lora_alpha=32" in str(err.value)


def test_wrong_type_reports_value_and_expected_type(components: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(components, _base(components)), ["run.init_lr=fast", "model.freeze_vit=perhaps"])
    probs = _problems(err)
    assert "'fast' is not a valid float" in probs["run.init_lr"].message
    assert "'perhaps' is not a valid bool" in probs["model.freeze_vit"].message
    assert probs["run.init_lr"].fix == "run.init_lr=<float>"


def test_required_path_unset_and_upstream_placeholder_are_errors(components: Path) -> None:
    data = _base(components)
    data["model"]["llama_model"] = "please set this value to the path of llama2-chat-7b"
    data["datasets"]["cfgtest_set"]["build_info"]["ann_path"] = "???"
    with pytest.raises(ConfigError) as err:
        load_config(_write(components, data))
    probs = _problems(err)
    assert "required value is not set" in probs["model.llama_model"].message
    assert "HF LLaMA folder" in probs["model.llama_model"].message
    assert probs["model.llama_model"].fix == "model.llama_model=/path/to/..."
    assert "required value is not set" in probs["datasets.cfgtest_set.build_info.ann_path"].message


def test_path_missing_on_disk_is_an_error_unless_checks_are_off(components: Path) -> None:
    data = _base(components)
    data["model"]["llama_model"] = str(components / "no_such_llama")
    data["datasets"]["cfgtest_set"]["build_info"]["image_root"] = str(components / "no_images")
    path = _write(components, data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    probs = _problems(err)
    assert f"does not exist: {components / 'no_such_llama'}" in probs["model.llama_model"].message
    assert "folder does not exist" in probs["datasets.cfgtest_set.build_info.image_root"].message
    assert load_config(path, check_paths=False).model.llama_model.endswith("no_such_llama")


def test_unknown_registry_names_are_errors_with_closest_match(components: Path) -> None:
    data = _base(components)
    data["datasets"]["cfgtest_sett"] = {"batch_size": 1}
    data["datasets"]["cfgtest_set"]["vis_processor"]["train"]["name"] = "cfgtest_prc"
    data["run"]["lr_sched"] = "cfgtest_schd"
    with pytest.raises(ConfigError) as err:
        load_config(_write(components, data), ["model.arch=cfgtest_modl"])
    probs = _problems(err)
    assert "unknown dataset builder 'cfgtest_sett'" in probs["datasets.cfgtest_sett"].message
    assert "Did you mean 'cfgtest_set'?" in probs["datasets.cfgtest_sett"].message
    assert "unknown processor 'cfgtest_prc'" in probs["datasets.cfgtest_set.vis_processor.train.name"].message
    assert "unknown model 'cfgtest_modl'" in probs["model.arch"].message
    assert probs["model.arch"].fix == "model.arch=cfgtest_model"
    assert "unknown LR scheduler 'cfgtest_schd'" in probs["run.lr_sched"].message
    assert probs["run.lr_sched"].fix == "run.lr_sched=cfgtest_sched"


def test_unknown_model_type_lists_presets(components: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(components, _base(components)), ["model.model_type=presett"])
    p = _problems(err)["model.model_type"]
    assert "unknown preset 'presett'" in p.message and "['preset']" in p.message and p.fix == "model.model_type=preset"


def test_every_problem_is_reported_at_once(components: Path) -> None:
    data = _base(components)
    data["model"]["lora_alpah"] = 1
    data["model"]["llama_model"] = "???"
    data["run"]["init_lr"] = "x"
    data["datasets"]["nope"] = {}
    data["trainer"] = {}
    with pytest.raises(ConfigError) as err:
        load_config(_write(components, data), ["run.max_epoch=1.5"])
    keys = set(_problems(err))
    assert {"model.lora_alpah", "model.llama_model", "run.init_lr", "datasets.nope", "trainer",
            "run.max_epoch"} <= keys
    assert str(err.value).startswith(f"{len(err.value.problems)} problem(s) in ")


def test_builder_alias_is_accepted_as_dataset_name(components: Path) -> None:
    data = _base(components)
    data["datasets"] = {"cfgtest_alias": data["datasets"]["cfgtest_set"]}
    cfg = load_config(_write(components, data))
    assert cfg.datasets.cfgtest_alias.sample_ratio == 7


def test_env_interpolation_in_paths(components: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _base(components)
    data["datasets"]["cfgtest_set"]["build_info"]["ann_path"] = "${oc.env:CFGTEST_DATA,/nowhere}/ann.json"
    path = _write(components, data)
    monkeypatch.setenv("CFGTEST_DATA", str(components))
    assert load_config(path).datasets.cfgtest_set.build_info.ann_path == str(components / "ann.json")
    monkeypatch.delenv("CFGTEST_DATA")
    with pytest.raises(ConfigError, match="file does not exist: /nowhere/ann.json"):
        load_config(path)


def test_resolved_config_round_trips_through_yaml(components: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _base(components)
    data["datasets"]["cfgtest_set"]["build_info"]["ann_path"] = "${oc.env:CFGTEST_DATA}/ann.json"
    monkeypatch.setenv("CFGTEST_DATA", str(components))
    cfg = load_config(_write(components, data), ["model.lora_r=4"])
    out = components / "resolved.yaml"
    text = cfg.to_yaml(out)
    assert "${" not in text and str(components / "ann.json") in text
    again = load_config(out)
    assert again.to_dict() == cfg.to_dict()


def test_typed_sections_reject_new_keys_in_code(components: Path) -> None:
    cfg = load_config(_write(components, _base(components)))
    with pytest.raises(Exception):
        cfg.model.lora_rank = 3  # struct mode: a typo in code fails too


def test_relative_paths_resolve_against_the_package_folder_too(components: Path) -> None:
    data = _base(components)
    data["model"]["prompt_path"] = "prompts/alignment.txt"  # upstream's value, relative to minigpt4/
    assert load_config(_write(components, data)).model.prompt_path == "prompts/alignment.txt"
    data["model"]["prompt_path"] = "prompts/no_such_file.txt"
    with pytest.raises(ConfigError, match="file does not exist: prompts/no_such_file.txt"):
        load_config(_write(components, data))


def test_dataset_paths_can_be_left_unchecked_for_chat(components: Path) -> None:
    data = _base(components)
    data["datasets"]["cfgtest_set"]["build_info"]["ann_path"] = str(components / "missing.json")
    data["model"]["ckpt"] = str(components / "missing.pth")
    path = _write(components, data)
    with pytest.raises(ConfigError) as err:
        load_config(path, check_dataset_paths=False)
    assert set(_problems(err)) == {"model.ckpt"}, "model paths are still checked"
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert set(_problems(err)) == {"model.ckpt", "datasets.cfgtest_set.build_info.ann_path"}
