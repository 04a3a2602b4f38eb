"""``facegpt-data shards`` and the face builders' shard path: same samples as the JSON path, manifest, re-runs."""

from __future__ import annotations

import json
import random
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, List

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from minigpt4.datasets.builders import DatasetConfigError  # noqa: E402
from minigpt4.datasets.datasets.collate import SkippedSample  # noqa: E402
from minigpt4.datasets.shards import ShardError, expand_shard_spec, shard_order, slot_parts  # noqa: E402
from minigpt4.tools.data import main as data_main  # noqa: E402
from minigpt4.tools.data_shards import PackError, parse_size, render  # noqa: E402
from shard_support import json_builders, pack_root, shard_builder, shard_spec, write_face_root  # noqa: E402


def _json_items(root: Path, **extra: Any) -> List[Any]:
    items = []
    for builder in json_builders(root, **extra):
        ds = builder.build_datasets()["train"]
        items += [ds[i] for i in range(len(ds))]
    return items


def _same(a: Any, b: Any) -> None:
    if isinstance(a, SkippedSample):
        assert isinstance(b, SkippedSample) and (a.image, a.reason) == (b.image, b.reason)
        return
    assert set(a) == set(b)
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


def test_shards_yield_the_same_samples_as_the_json_files_bad_images_included(tmp_path: Path) -> None:
    root = write_face_root(tmp_path / "data", bad=True)
    manifest = pack_root(root, tmp_path / "shards", shard_size="5KB")
    assert len(manifest["shards"]) > 3
    expected = _json_items(root, on_error="skip", max_turns=2)
    builder = shard_builder(shard_spec(tmp_path / "shards", manifest), on_error="skip", max_turns=2)
    ds = builder.build_datasets()["train"]
    ds.configure(rank=0, world_size=1, num_workers=0, seed=0, pass_index=0, shuffle=False)
    got = list(ds)
    assert len(got) == len(expected) == len(ds) == 12 + 3 + 20
    for a, b in zip(expected, got):
        _same(a, b)
    assert sum(isinstance(x, SkippedSample) for x in got) == 3  # missing, undecodable, outside the root
    assert any("conv_q" in x for x in got if isinstance(x, dict)), "multi-turn records come out as conversations"


def test_manifest_counts_per_section_and_shard_and_what_was_left_out(tmp_path: Path) -> None:
    root = write_face_root(tmp_path / "data", bad=True)
    manifest = pack_root(root, tmp_path / "shards", shard_size="5KB")
    on_disk = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["records"] == sum(s["records"] for s in manifest["shards"]) == 35
    assert manifest["sections"] == {"": 15, "Fitzpatrick": 10, "Human or not": 10}
    assert manifest["skipped"] == {"malformed": 1, "duplicate_image": 0, "outside_root": 1, "missing": 1,
                                   "undecodable": 1}
    assert "bad_record" not in json.dumps(manifest) and "record #15" in manifest["examples"]["malformed"][0]
    sizes = [(tmp_path / "shards" / s["name"]).stat().st_size for s in manifest["shards"]]
    assert sizes == [s["bytes"] for s in manifest["shards"]]
    for shard in manifest["shards"]:  # members (headers + data) of a shard of several samples fit in --shard-size
        with tarfile.open(tmp_path / "shards" / shard["name"]) as tar:
            members = tar.getmembers()
        used = members[-1].offset_data + -(-members[-1].size // 512) * 512
        assert shard["records"] == 1 or used + 1024 <= 5000, (shard, used)
        assert sum(m.name.endswith(".json") for m in members) == shard["records"]
    assert manifest["image_bytes"] == sum(s["image_bytes"] for s in manifest["shards"]) > 0
    assert expand_shard_spec(str(tmp_path / "shards" / manifest["pattern"])) == \
        [str(tmp_path / "shards" / s["name"]) for s in manifest["shards"]]


def test_rerun_keeps_finished_shards_and_finishes_the_rest_identically(tmp_path: Path) -> None:
    root = write_face_root(tmp_path / "data", bad=True)
    out = tmp_path / "shards"
    first = pack_root(root, out, shard_size="5KB")
    names = [s["name"] for s in first["shards"]]
    content = {n: (out / n).read_bytes() for n in names}
    # a crash while writing shard 3: shards 3.. and the manifest are gone, a temporary file is left
    for n in names[3:]:
        (out / n).unlink()
        (out / ".parts" / n.replace(".tar", ".json")).unlink()
    (out / "manifest.json").unlink()
    (out / (names[3] + ".tmp")).write_bytes(b"half a shard")
    kept = {n: (out / n).stat().st_mtime_ns for n in names[:3]}
    second = pack_root(root, out, shard_size="5KB")
    assert second == first
    assert {n: (out / n).stat().st_mtime_ns for n in names[:3]} == kept, "finished shards are not rewritten"
    assert {n: (out / n).read_bytes() for n in names} == content
    assert not list(out.glob("*.tmp"))
    with pytest.raises(PackError, match="other inputs or options"):
        pack_root(root, out, shard_size="7KB")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "shard-000000.tar").write_bytes(b"someone else's data")
    with pytest.raises(PackError, match="did not write .*left alone"):
        pack_root(root, foreign)
    assert (foreign / "shard-000000.tar").read_bytes() == b"someone else's data"


def test_builder_reads_only_the_manifest_at_start_up(tmp_path: Path) -> None:
    root = write_face_root(tmp_path / "data")
    manifest = pack_root(root, tmp_path / "shards")
    for shard in manifest["shards"]:  # unreadable tars: building must not open them
        (tmp_path / "shards" / shard["name"]).write_bytes(b"\0" * 10)
    ds = shard_builder(shard_spec(tmp_path / "shards", manifest)).build_datasets()["train"]
    assert len(ds) == manifest["records"]
    ds.configure(rank=0, world_size=1, num_workers=0, seed=0, pass_index=0)
    with pytest.raises(Exception):
        next(iter(ds))


def test_shard_options_that_need_every_record_are_refused_with_the_fix(tmp_path: Path) -> None:
    root = write_face_root(tmp_path / "data", bad=True)
    manifest = pack_root(root, tmp_path / "shards")
    spec = shard_spec(tmp_path / "shards", manifest)
    with pytest.raises(DatasetConfigError, match=r"1 malformed record\(s\) were left out .*on_error=skip"):
        shard_builder(spec).build_datasets()
    with pytest.raises(DatasetConfigError, match=r"split.val_fraction .*facegpt-data split"):
        shard_builder(spec, on_error="skip", split={"val_fraction": 0.2}).build_datasets()
    with pytest.raises(DatasetConfigError, match=r"sections=\['Fitzpatrick'\] but the shards hold"):
        shard_builder(spec, on_error="skip", sections=["Fitzpatrick"]).build_datasets()
    with pytest.raises(DatasetConfigError, match=r"one_per_image: re-pack with .*--one-per-image"):
        shard_builder(spec, on_error="skip", duplicate_images="one_per_image").build_datasets()
    with pytest.raises(ShardError, match=r"is not in .*manifest.json .*Fix: set .*shards/shard-\{000000\.\."):
        shard_builder(str(tmp_path / "shards" / "shard-{000000..000999}.tar"), on_error="skip").build_datasets()
    (tmp_path / "shards" / manifest["shards"][1]["name"]).unlink()
    with pytest.raises(ShardError, match=r"shard file not found: .*shard-000001.tar"):
        shard_builder(spec, on_error="skip").build_datasets()


def test_validation_split_from_its_own_shard_set_in_file_order(tmp_path: Path) -> None:
    root = write_face_root(tmp_path / "data")
    train = pack_root(root, tmp_path / "train")
    val_root = write_face_root(tmp_path / "val_data", n_share=3, n_per_section=2)
    val = pack_root(val_root, tmp_path / "val")
    splits = shard_builder(shard_spec(tmp_path / "train", train), val_spec=shard_spec(tmp_path / "val", val)
                           ).build_datasets()
    from minigpt4.runners.loaders import validation_loader

    ids = [i for batch in validation_loader(splits["val"], batch_size=2, num_workers=0, rank=0, world_size=1,
                                            collate_fn=splits["val"].collater) for i in batch["image_id"]]
    assert ids == ["g0_0", "g0_1", "g1_0", "g1_1", "s0", "s1", "s2"]


def test_command_line_packs_prints_the_config_line_and_sizes_parse(tmp_path: Path, capsys: Any) -> None:
    root = write_face_root(tmp_path / "data", bad=True)
    assert data_main(["shards", "--root", str(root), "--out", str(tmp_path / "s"), "--shard-size", "8KB",
                      "--sections", "Fitzpatrick"]) == 0
    out = capsys.readouterr().out
    assert "25 record(s)" in out and "left out: 1 malformed" in out and "1 missing" in out
    assert f"build_info.shards: {tmp_path / 's'}/shard-{{000000.." in out
    assert data_main(["shards", "--root", str(root), "--out", str(tmp_path / "t"), "--sections", "Nope"]) == 2
    assert "not a sample section" in capsys.readouterr().err
    assert parse_size("1GB") == 10**9 and parse_size("64KiB") == 65536 and parse_size("123") == 123
    with pytest.raises(PackError):
        parse_size("big")


def test_exact_duplicates_are_noted_and_one_per_image_keeps_the_first_record_of_each_image(tmp_path: Path,
                                                                                          caplog: Any) -> None:
    root = write_face_root(tmp_path / "data")
    share = root / "ShareGPTData" / "Annotations" / "subset_objects_gpt4vision_100k.json"
    records = json.loads(share.read_text())
    share.write_text(json.dumps(records + [dict(records[1], id="copy")]))
    manifest = pack_root(root, tmp_path / "shards")
    assert manifest["exact_duplicates"] == {str(share): 1} and manifest["records"] == 33
    assert "record #12 repeats the record at pack position" in manifest["exact_duplicate_example"]
    assert "kept 1 exact duplicate record(s) (first: " in render(manifest, tmp_path / "shards")
    shard_builder(shard_spec(tmp_path / "shards", manifest)).build_datasets()
    assert "exact duplicate records (same image and turns" in caplog.text
    assert "1 in subset_objects_gpt4vision_100k.json; first: " in caplog.text
    single = pack_root(root, tmp_path / "single", one_per_image=True)
    assert single["records"] == 6 + 6 and single["skipped"]["duplicate_image"] == 33 - 12
    assert single["sources"] == {share.name: 6, "gpt4VisionCalls_Cleaned_BySection.json": 6}
    ds = shard_builder(shard_spec(tmp_path / "single", single), duplicate_images="one_per_image").build_datasets()
    assert len(ds["train"]) == 12


@pytest.mark.parametrize("slots", [1, 2, 3, 4, 7])
def test_slots_cover_every_record_once_and_padding_stays_below_the_slot_count(slots: int) -> None:
    rng = random.Random(slots)
    for trial in range(30):
        counts = [rng.choice([0, 1, 2, 5, 9]) for _ in range(rng.randint(1, 9))]
        total = sum(counts)
        order = shard_order(len(counts), seed=trial, pass_index=trial % 3, shuffle=True)
        for pad in (False, True):
            taken = [[(p.shard, i) for p in slot_parts(counts, order, s, slots, pad) for i in range(p.start, p.stop)]
                     for s in range(slots)]
            seen = Counter(x for slot in taken for x in slot)
            assert set(seen) == {(k, i) for k, c in enumerate(counts) for i in range(c)}, (counts, slots, pad)
            if not pad:
                assert all(n == 1 for n in seen.values()) and sum(map(len, taken)) == total
            elif total:
                assert {len(slot) for slot in taken} == {-(-total // slots)}, "every slot yields the same count"
                assert sum(seen.values()) - total == slots * -(-total // slots) - total < slots
