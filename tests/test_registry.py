"""Registry semantics: upstream's names, strict duplicates, helpful unknown-name errors, no state."""

from __future__ import annotations

import pytest

from minigpt4.common.registry import Registry, RegistryError, registry


def test_register_get_and_list_use_upstream_names() -> None:
    reg = Registry()

    @reg.register_builder("face_set")
    class FaceBuilder:
        pass

    @reg.register_lr_scheduler("my_sched")
    def make_sched() -> None:
        return None

    assert reg.get_builder_class("face_set") is FaceBuilder
    assert reg.get_lr_scheduler_class("my_sched") is make_sched
    assert reg.list_datasets() == ["face_set"]
    assert reg.list_lr_schedulers() == ["my_sched"]
    assert reg.list_models() == [] and reg.list_runners() == [] and reg.list_tasks() == []


def test_duplicate_name_raises_naming_both_definitions() -> None:
    reg = Registry()

    @reg.register_model("m")
    class First:
        pass

    with pytest.raises(RegistryError) as err:

        @reg.register_model("m")
        class Second:
            pass

    msg = str(err.value)
    assert "'m' is already registered by" in msg and "First" in msg and "Second" in msg
    assert reg.get_model_class("m") is First


def test_alias_cannot_shadow_existing_name() -> None:
    reg = Registry()

    @reg.register_builder("a")
    class A:
        pass

    with pytest.raises(RegistryError, match="'a' is already registered"):
        reg.register_builder("b", aliases=("a",))(type("B", (), {}))


def test_unknown_name_lists_known_names_and_closest_match() -> None:
    reg = Registry()
    for name in ("minigpt4", "minigpt_v2"):
        reg.register_model(name)(type(name, (), {}))
    with pytest.raises(RegistryError) as err:
        reg.get_model_class("minigpt_v3")
    msg = str(err.value)
    assert "unknown model 'minigpt_v3'" in msg
    assert "Known: minigpt4, minigpt_v2." in msg
    assert "Did you mean 'minigpt_v2'?" in msg


def test_unknown_name_without_close_match_gives_no_guess() -> None:
    reg = Registry()
    reg.register_task("image_text_pretrain")(type("T", (), {}))
    with pytest.raises(RegistryError) as err:
        reg.get_task_class("zzz")
    assert "Did you mean" not in str(err.value)
    assert "image_text_pretrain" in str(err.value)


def test_aliases_resolve_to_the_same_class() -> None:
    reg = Registry()

    @reg.register_builder("facegpt4vision", aliases=("gpt4visionface_detail",))
    class B:
        pass

    assert reg.get_builder_class("gpt4visionface_detail") is B
    assert reg.list_datasets() == ["facegpt4vision"]
    assert reg.has("builder", "gpt4visionface_detail")


def test_registry_holds_only_classes_and_functions() -> None:
    reg = Registry()
    with pytest.raises(TypeError, match="classes and functions only"):
        reg.register_processor("cfg")({"a": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="classes and functions only"):
        reg.register_runner("path")("/tmp/somewhere")  # type: ignore[arg-type]
    for attr in ("register_path", "get_path", "register", "mapping"):
        assert not hasattr(registry, attr), f"registry must hold no state, found {attr}"


def test_import_minigpt4_fills_the_registry() -> None:
    import minigpt4  # noqa: F401

    assert {"minigpt4", "minigpt_v2"} <= set(registry.list_models())
    assert {"sharegpt_face", "facegpt4vision", "cc_sbu_align"} <= set(registry.list_datasets())
    assert registry.get_builder_class("sharegpt_detail") is registry.get_builder_class("sharegpt_face")
    assert registry.get_builder_class("gpt4visionface_detail") is registry.get_builder_class("facegpt4vision")
    assert {"blip2_image_train", "blip2_image_eval", "blip_caption"} <= set(registry.list_processors())
    assert "image_text_pretrain" in registry.list_tasks()
    assert "runner_base" in registry.list_runners()
    assert {"linear_warmup_cosine_lr", "linear_warmup_step_lr"} <= set(registry.list_lr_schedulers())
