"""Helpers of the chat tests: where the tiny eval configs and demo scripts are, and how to run a demo process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[2]
TINY_EVAL = {"minigpt4": REPO / "eval_configs" / "tiny_minigpt4_eval.yaml",
             "minigpt_v2": REPO / "eval_configs" / "tiny_minigpt_v2_eval.yaml"}
DEMO = {"minigpt4": REPO / "demo_v1_command_line.py", "minigpt_v2": REPO / "demo_v2_command_line.py"}


def demo_env(home: Path) -> Dict[str, str]:
    """Environment for a demo subprocess: offline, its own HOME (history file), unbuffered output."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", HOME=str(home), PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    env.pop("XDG_CACHE_HOME", None)
    return env


def run_demo_subprocess(arch: str, args: List[str], home: Path, stdin: str = "",
                        timeout: float = 120) -> subprocess.CompletedProcess:
    """``python demo_v?_command_line.py ARGS`` with ``stdin`` piped in (so it is not a terminal)."""
    return subprocess.run([sys.executable, str(DEMO[arch]), *args], input=stdin, capture_output=True, text=True,
                          env=demo_env(home), cwd=str(home), timeout=timeout)
