"""``scripts/demo.py`` (``make demo``): argument faults are one line and exit status 2, before any work."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[1]


def _demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("facegpt_demo_script", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, named", [
    (["--iters", "0"], "--iters"),
    (["--align-iters", "-1"], "--align-iters"),
    (["--n", "0"], "--n"),
    (["--eval-per-section", "0"], "--eval-per-section"),
    (["--threads", "0"], "--threads"),
])
def test_demo_argument_faults_are_one_line(argv: List[str], named: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    assert _demo().main(["--out", str(out), *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scripts/demo.py: ") and named in lines[0], lines
    assert not out.exists(), "nothing is written before the arguments are checked"


def test_demo_unknown_flag_is_argparse_usage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        _demo().main(["--out", str(tmp_path), "--no-such-flag"])
    assert exit_.value.code == 2 and "--no-such-flag" in capsys.readouterr().err
