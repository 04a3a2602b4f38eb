"""``model.vit_feature_cache_mb``: a frozen tower's features kept per image (``minigpt4/models/feature_cache.py``)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import pytest
import torch

from minigpt4.models.connectors import ModelConfigError
from minigpt4.models.feature_cache import FeatureCache, image_digest

V2_Q = "<Img><ImageHere></Img> [vqa] What colour is the hair?"


def _images(n: int, seed: int, size: int = 224) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))  # (n, 3, S, S)


def _tower_inputs(model: Any) -> List[int]:
    """Batch sizes the tower is run on (appended by a forward hook on ``visual_encoder``)."""
    seen: List[int] = []
    model.visual_encoder.register_forward_hook(lambda _m, args, _out: seen.append(int(args[0].shape[0])))
    return seen


def test_cached_features_equal_the_towers_and_repeats_skip_it(tiny_model: Callable[..., Any]) -> None:
    plain = tiny_model("minigpt_v2")
    cached = tiny_model("minigpt_v2", vit_feature_cache_mb=64)
    assert plain.vision_cache is None and cached.vision_cache is not None
    calls = _tower_inputs(cached)
    a, b, c = _images(3, seed=1)
    first = torch.stack([a, b, a])  # an image twice in one batch: computed once
    second = torch.stack([c, b, a, c])  # two held, one new (twice)
    with torch.no_grad():
        for batch in (first, second):
            want, _ = plain.encode_img(batch)
            got, atts = cached.encode_img(batch)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            assert atts.shape == got.shape[:2]
    assert calls == [2, 1]  # the tower saw a and b, then c
    assert cached.vision_cache.stats() | {"mb_held": 0} == {
        "hits": 1 + 3, "misses": 2 + 1, "evicted": 0, "resets": 0, "images_held": 3, "mb_held": 0}


def test_cached_training_loss_and_gradients_match_the_uncached_model(tiny_model: Callable[..., Any]) -> None:
    plain = tiny_model("minigpt_v2").train()
    cached = tiny_model("minigpt_v2", vit_feature_cache_mb=64).train()
    images = _images(2, seed=2)
    batch: Dict[str, Any] = {"image": images, "instruction_input": [V2_Q] * 2, "answer": ["Blond.", "Black."],
                             "image_id": ["0", "1"], "section": [""] * 2, "skipped": 0}
    with torch.no_grad():
        cached.encode_img(images)  # now held: the training pass below reads the cache
    grads = []
    for model in (plain, cached):
        model.zero_grad()
        loss = model(dict(batch))["loss"]
        loss.backward()
        grads.append((loss.detach(), model.llama_proj.weight.grad.clone()))
    assert cached.vision_cache.hits == 2
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-6)


def test_new_tower_weights_empty_the_cache(tiny_model: Callable[..., Any]) -> None:
    model = tiny_model("minigpt_v2", vit_feature_cache_mb=64)
    images = _images(2, seed=3)
    with torch.no_grad():
        before, _ = model.encode_img(images)
        state = {k: v + 0.5 for k, v in model.visual_encoder.state_dict().items()}
        model.visual_encoder.load_state_dict(state)  # in place: same storage, new version
        after, _ = model.encode_img(images)
        model.vision_cache = None
        want, _ = model.encode_img(images)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, want, rtol=1e-5, atol=1e-6)


def test_a_change_of_autocast_dtype_is_not_served_old_features(tiny_model: Callable[..., Any]) -> None:
    model = tiny_model("minigpt_v2", vit_feature_cache_mb=64)
    images = _images(2, seed=4)
    with torch.no_grad():
        fp32, _ = model.encode_img(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half, _ = model.encode_img(images)
    assert model.vision_cache.resets == 1 and model.vision_cache.misses == 4
    assert not torch.equal(half.float(), fp32)


def test_memory_bound_drops_the_least_recently_used_image() -> None:
    cache = FeatureCache(max_mb=3 * 4 / 1024 / 1024 * 1000)  # room for 3 rows of 1000 fp32 values
    computed: List[int] = []

    def compute(x: torch.Tensor) -> torch.Tensor:
        computed.append(int(x.shape[0]))
        return x.reshape(x.shape[0], -1)[:, :1].repeat(1, 1000) * 2  # (M, 1000)

    rows = [torch.full((2, 2), float(i)) for i in range(4)]
    out = cache.features(torch.stack(rows[:3]), compute, context=0)
    assert torch.equal(out[:, 0], torch.tensor([0.0, 2.0, 4.0]))
    cache.features(torch.stack([rows[0]]), compute, context=0)  # 0 is now the most recently used
    out = cache.features(torch.stack([rows[3], rows[0]]), compute, context=0)  # room for 3: 1 is dropped
    assert torch.equal(out[:, 0], torch.tensor([6.0, 0.0]))
    assert computed == [3, 1] and cache.evicted == 1 and len(cache) == 3
    cache.features(torch.stack([rows[1]]), compute, context=0)
    assert computed == [3, 1, 1]  # 1 had been dropped: computed again
    cache.features(torch.stack([rows[1]]), compute, context=1)  # another context: nothing held is valid
    assert computed == [3, 1, 1, 1] and cache.resets == 1 and len(cache) == 1


def test_digest_tells_values_shapes_and_dtypes_apart() -> None:
    x = torch.zeros(3, 4, 4)
    y = x.clone()
    y[2, 3, 3] = 1e-7
    keys = {image_digest(x), image_digest(y), image_digest(x.reshape(3, 2, 8)), image_digest(x.double()),
            image_digest(x.bfloat16())}
    assert len(keys) == 5 and image_digest(x) == image_digest(x.clone())


def test_cache_refused_for_a_trained_tower_and_negative_sizes(tiny_model: Callable[..., Any]) -> None:
    with pytest.raises(ModelConfigError, match=r"vit_feature_cache_mb=8 .*freeze_vit=False trains it"):
        tiny_model("minigpt_v2", vit_feature_cache_mb=8, freeze_vit=False)
    with pytest.raises(ModelConfigError, match=r"vit_feature_cache_mb must be 0 \(off\) or a size in MB, got -1"):
        tiny_model("minigpt_v2", vit_feature_cache_mb=-1)
