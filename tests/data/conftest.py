"""Fixtures of the data tests: a tiny data root in the team's layout built from tests/fixtures/data."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict

import pytest

from data_helpers import FIXTURES, images_named, write_images


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def data_root(tmp_path: Path) -> Dict[str, Path]:
    """``ShareGPTData`` with sharegpt_good.json and ``GPT4VisionData`` with sections_good.json, images drawn."""
    share_ann = tmp_path / "ShareGPTData" / "Annotations"
    gpt_ann = tmp_path / "GPT4VisionData" / "Annotations"
    share_ann.mkdir(parents=True)
    gpt_ann.mkdir(parents=True)
    shutil.copy(FIXTURES / "sharegpt_good.json", share_ann / "sharegpt_good.json")
    shutil.copy(FIXTURES / "sections_good.json", gpt_ann / "sections_good.json")
    write_images(tmp_path / "ShareGPTData" / "Images", images_named(FIXTURES / "sharegpt_good.json"))
    write_images(tmp_path / "GPT4VisionData" / "Images", images_named(FIXTURES / "sections_good.json"))
    return {
        "root": tmp_path,
        "share_ann": share_ann / "sharegpt_good.json",
        "share_images": tmp_path / "ShareGPTData" / "Images",
        "gpt_ann": gpt_ann / "sections_good.json",
        "gpt_images": tmp_path / "GPT4VisionData" / "Images",
    }
