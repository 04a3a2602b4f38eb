"""Packaging: pinned versions agree across files; the venv set-up is idempotent."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_environment_yml_pins_equal_constraints() -> None:
    constraints = _pins((REPO / "constraints.txt").read_text().splitlines())
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_pins = _pins(pip_section)
    assert conda_pins == constraints, "environment.yml and constraints.txt must pin the same versions"


def test_every_installed_dependency_is_pinned_for_testing() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["dev"] + project["optional-dependencies"]["demo"]
    names = {re.split(r"[<>=!~\[ ]", dep, maxsplit=1)[0].lower() for dep in deps}
    constraints = _pins((REPO / "constraints.txt").read_text().splitlines())
    unpinned = sorted(names - set(constraints) - {"numpy", "pyyaml"})  # these two come with torch/omegaconf
    assert not unpinned, f"dependencies without a tested pin in constraints.txt: {unpinned}"


def test_torch_is_a_range_in_pyproject_so_a_users_cuda_build_is_kept() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_dep = next(d for d in deps if d.startswith("torch") and not d.startswith("torchvision"))
    assert "==" not in torch_dep and ">=" in torch_dep


def test_setup_is_idempotent_when_the_venv_is_current() -> None:
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        return  # running outside the project venv: nothing to check against
    start = time.monotonic()
    out = subprocess.run(["bash", str(REPO / "scripts" / "setup_venv.sh")], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout == "" and "installing" not in out.stderr, "a current venv must not reinstall anything"
    assert time.monotonic() - start < 10
