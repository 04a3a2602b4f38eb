"""A fault in the user's data or config reaches the terminal as ONE line with exit status 2, from every entry point.

Each test builds its fault in a copy of the synthetic data root (annotation files copied, image folders linked)
and runs the entry point the way users do: ``train.py``'s ``main`` in-process on the tiny config, the script as a
subprocess, ``torchrun`` with two CPU processes (slow), the evaluation tool, the data tools and ``scripts/demo.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, List, Tuple

import pytest

from minigpt4.common.errors import UserError, flatten, is_user_error, one_line, run_main

REPO = Path(__file__).resolve().parents[1]
SHAREGPT = "ShareGPTData/Annotations/subset_objects_gpt4vision_100k.json"
SECTIONS = "GPT4VisionData/Annotations/gpt4VisionCalls_Cleaned_BySection.json"
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d [DIWEC] ")  # minigpt4.common.logger's format


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def train_module() -> ModuleType:
    return _load(REPO / "train.py")


@pytest.fixture(scope="module")
def tiny_weight_options(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> List[str]:
    """``--options`` that make ``train_configs/tiny_minigpt_v2.yaml`` loadable (tiny LLaMA folder, tiny EVA file)."""
    from minigpt4.tools.tiny_weights import write_tiny_eva

    eva = write_tiny_eva(tmp_path_factory.mktemp("entry_weights") / "eva_vit_g.pth")
    return [f"model.llama_model={tiny_llama_dir}", f"model.vit_ckpt={eva}"]


def _copy_root(src: Path, dst: Path) -> Path:
    """Annotation files copied (the test edits them), image folders linked."""
    for family in ("ShareGPTData", "GPT4VisionData"):
        shutil.copytree(src / family / "Annotations", dst / family / "Annotations")
        os.symlink(src / family / "Images", dst / family / "Images")
    return dst


def _edit_json(path: Path, change: Callable) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data), indent=1))


def _first_section(root: Path) -> str:
    data = json.loads((root / SECTIONS).read_text())
    return next(name for name, recs in data.items()
                if isinstance(recs, list) and len(recs) > 1 and "conversations" in recs[1])


# ----------------------------------------------------------------------------------- the faults

def _no_image(root: Path) -> Tuple[List[str], List[str]]:
    _edit_json(root / SHAREGPT, lambda recs: [r if i != 2 else {k: v for k, v in r.items() if k != "image"}
                                             for i, r in enumerate(recs)])
    return [], [f"{root / SHAREGPT} record #2", "missing key 'image'", "on_error: skip"]


def _assistant_first(root: Path) -> Tuple[List[str], List[str]]:
    section = _first_section(root)

    def swap(data: Dict) -> Dict:
        turns = data[section][1]["conversations"]
        turns[0]["from"], turns[1]["from"] = turns[1]["from"], turns[0]["from"]
        return data

    _edit_json(root / SECTIONS, swap)
    return [], [f"{root / SECTIONS}[{section.strip()!r}] record #1", "odd turn order", "starting with a question"]


def _trailing_comma(root: Path) -> Tuple[List[str], List[str]]:
    text = (root / SHAREGPT).read_text().rstrip()
    assert text.endswith("]")
    (root / SHAREGPT).write_text(text[:-1].rstrip() + ",\n]\n")
    return [], [f"{root / SHAREGPT}:", "invalid JSON", "remove the trailing comma"]


def _truncated(root: Path) -> Tuple[List[str], List[str]]:
    text = (root / SECTIONS).read_text()
    (root / SECTIONS).write_text(text[: len(text) // 2])
    return [], [f"{root / SECTIONS}:", "ends before its JSON is complete"]


def _section_not_a_list(root: Path) -> Tuple[List[str], List[str]]:
    section = _first_section(root)
    _edit_json(root / SECTIONS, lambda data: {**data, section: {"records": data[section]}})
    return [], [str(root / SECTIONS), f"section {section!r}", "must be a list of records"]


def _unknown_section(root: Path) -> Tuple[List[str], List[str]]:
    return (["datasets.facegpt4vision.sections=[Facial Expresion]"],
            [str(root / SECTIONS), "unknown section 'Facial Expresion'", "Available sections"])


def _missing_file(root: Path) -> Tuple[List[str], List[str]]:
    (root / SHAREGPT).unlink()
    return [], ["problem(s) in", "datasets.sharegpt_face.build_info.ann_path[0]: file does not exist",
                str(root / SHAREGPT), "fix: --options datasets.sharegpt_face.build_info.ann_path="]


def _list_for_object(root: Path) -> Tuple[List[str], List[str]]:
    shutil.copy(root / SHAREGPT, root / SECTIONS)
    return [], ["datasets.facegpt4vision.build_info.ann_path", str(root / SECTIONS), "holds a JSON list",
                "a JSON object is expected", "sharegpt_face"]


FAULTS = {"record without image": _no_image, "assistant speaks first": _assistant_first,
          "trailing comma": _trailing_comma, "truncated file": _truncated, "section not a list": _section_not_a_list,
          "requested section missing": _unknown_section, "annotation file missing": _missing_file,
          "list where an object is expected": _list_for_object}


PROGRESS = re.compile(r"\d+/\d+ \[[\d:<?]+")  # a progress bar (transformers loading weights)


def _error_lines(stderr: str) -> List[str]:
    """What stderr shows besides log records and progress bars."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not LOG_LINE.match(ln) and not PROGRESS.search(ln)]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_train_reports_a_data_fault_as_one_line_with_status_2(fault: str, train_module: ModuleType,
                                                              synth_data_root: Path, tiny_weight_options: List[str],
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    root = _copy_root(synth_data_root, tmp_path / "data")
    extra, expected = FAULTS[fault](root)
    monkeypatch.setenv("FACEGPT_DATA", str(root))
    status = train_module.main(["--cfg-path", str(REPO / "train_configs" / "tiny_minigpt_v2.yaml"), "--options",
                                *tiny_weight_options, f"run.output_dir={tmp_path / 'out'}", *extra])
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("train.py: "), lines
    assert err.rstrip().endswith(lines[0]), "the error is the last thing printed"
    for part in expected:
        assert part in lines[0], (part, lines[0])
    if fault == "list where an object is expected":
        assert "invalid JSON" not in lines[0]
    if fault == "annotation file missing":
        assert "record(s) from sections" not in err, "caught when the config is loaded, before any dataset is read"


def test_strict_image_error_from_a_dataloader_worker_is_one_line(train_module: ModuleType, synth_data_root: Path,
                                                                  tiny_weight_options: List[str], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """The missing image is found inside a data-loader worker process (torch re-raises its error in the trainer)."""
    root = tmp_path / "data"
    shutil.copytree(synth_data_root / "ShareGPTData", root / "ShareGPTData")
    shutil.copytree(synth_data_root / "GPT4VisionData", root / "GPT4VisionData")
    images = sorted(p for p in (root / "ShareGPTData" / "Images").rglob("*") if p.is_file())
    for image in images:
        image.unlink()
    monkeypatch.setenv("FACEGPT_DATA", str(root))
    status = train_module.main(["--cfg-path", str(REPO / "train_configs" / "tiny_minigpt_v2.yaml"), "--options",
                                *tiny_weight_options, f"run.output_dir={tmp_path / 'out'}", "run.num_workers=1",
                                "datasets.sharegpt_face.strict_images=True", "run.valid_splits=[]"])
    lines = _error_lines(capsys.readouterr().err)
    assert status == 2, lines
    assert len(lines) == 1 and lines[0].startswith("train.py: ") and str(root / "ShareGPTData" / "Images") in lines[0]
    assert "Traceback" not in lines[0] and "DataLoader worker" not in lines[0], lines


def _train_cmd(options: List[str], out: Path) -> List[str]:
    return ["train.py", "--cfg-path", str(REPO / "train_configs" / "tiny_minigpt_v2.yaml"), "--options",
            *options, f"run.output_dir={out}"]


def _child_env(root: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "FACEGPT_DATA": str(root), "OMP_NUM_THREADS": "1",
                "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", "")})
    env.pop("RANK", None)
    return env


def test_train_script_as_a_subprocess_exits_2_with_one_line(synth_data_root: Path, tiny_weight_options: List[str],
                                                            tmp_path: Path) -> None:
    root = _copy_root(synth_data_root, tmp_path / "data")
    _, expected = _no_image(root)
    cmd = [sys.executable, *_train_cmd(tiny_weight_options, tmp_path / "out")]
    done = subprocess.run(cmd, cwd=REPO, env=_child_env(root), capture_output=True, text=True, timeout=300)
    lines = _error_lines(done.stderr)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(lines) == 1 and lines[0].startswith("train.py: ") and all(p in lines[0] for p in expected), lines


@pytest.mark.slow
def test_torchrun_rank_zero_prints_the_line_and_every_rank_exits_2(synth_data_root: Path, tmp_path: Path,
                                                                    tiny_weight_options: List[str]) -> None:
    """Slow (two CPU processes, ~40 s): torchrun's own summary lists each worker's exit code."""
    root = _copy_root(synth_data_root, tmp_path / "data")
    _, expected = _no_image(root)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *_train_cmd(tiny_weight_options, tmp_path / "out")]
    done = subprocess.run(cmd, cwd=REPO, env=_child_env(root), capture_output=True, text=True, timeout=400)
    ours = [ln for ln in done.stderr.splitlines() if ln.startswith(("train.py: ", "train.py [rank"))]
    assert len(ours) == 1 and ours[0].startswith("train.py: ") and expected[0] in ours[0], done.stderr
    summary = re.findall(r"^\s*exitcode\s*: (-?\d+)", done.stderr, re.M)  # one entry per worker
    assert summary == ["2", "2"], done.stderr
    workers = done.stderr.split("torch/distributed/elastic")[0]  # before the launcher's own failure report
    assert "Traceback" not in workers, "no traceback from the workers"


# ----------------------------------------------------------------------------- the other tools

def test_evaluate_tool_reports_a_data_fault_as_one_line(synth_data_root: Path, tiny_weight_options: List[str],
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    from minigpt4.tools import evaluate

    root = _copy_root(synth_data_root, tmp_path / "data")
    _, expected = _assistant_first(root)
    monkeypatch.setenv("FACEGPT_DATA", str(root))
    status = evaluate.main(["--cfg-path", str(REPO / "train_configs" / "tiny_minigpt_v2.yaml"), "--options",
                            *tiny_weight_options])
    lines = _error_lines(capsys.readouterr().err)
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("python -m minigpt4.tools.evaluate: "), lines
    assert all(p in lines[0] for p in expected), lines


def test_evaluate_tool_reports_a_config_problem_as_one_line(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    from minigpt4.tools import evaluate

    status = evaluate.main(["--cfg-path", str(tmp_path / "missing.yaml")])
    lines = _error_lines(capsys.readouterr().err)
    assert status == 2 and len(lines) == 1 and "YAML file not found" in lines[0], lines


@pytest.mark.parametrize("command", ["stats", "clean", "split"])
def test_data_tools_report_a_broken_file_as_one_line(command: str, synth_data_root: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    from minigpt4.tools import data

    root = _copy_root(synth_data_root, tmp_path / "data")
    _, expected = _trailing_comma(root)
    args = [command, str(root / SHAREGPT)] + (["--out-dir", str(tmp_path / "out")] if command != "stats" else [])
    status = data.main(args)
    lines = _error_lines(capsys.readouterr().err)
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith(f"facegpt-data {command}: "), lines
    assert all(p in lines[0] for p in expected), lines


def test_data_tools_name_a_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from minigpt4.tools import data

    assert data.main(["stats", str(tmp_path / "nope.json")]) == 2
    assert data.main(["validate", "--root", str(tmp_path / "no_root")]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert lines == [f"facegpt-data stats: annotation file(s) not found: {tmp_path / 'nope.json'}",
                     f"facegpt-data validate: --root {tmp_path / 'no_root'}: folder does not exist (expected the "
                     "data root holding ShareGPTData/ and GPT4VisionData/)"]


def test_data_tools_report_a_section_that_is_not_a_list_as_one_line(synth_data_root: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    from minigpt4.tools import data

    root = _copy_root(synth_data_root, tmp_path / "data")
    _section_not_a_list(root)
    status = data.main(["stats", "--root", str(root)])
    lines = _error_lines(capsys.readouterr().err)
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("facegpt-data stats: "), lines
    assert "that is not a list, but a list of records is expected" in lines[0] and "invalid JSON" not in lines[0]


def test_runner_faults_are_user_errors(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from minigpt4.common.schema import RunConfig
    from minigpt4.runners import checkpointing as ck
    from minigpt4.runners.settings import check_run_settings

    run = OmegaConf.structured(RunConfig)
    run.accum_grad_iters = 0
    with pytest.raises(ValueError) as bad_settings:
        check_run_settings(run)
    with pytest.raises(ValueError) as missing_resume:
        ck.resolve_resume(str(tmp_path / "missing.pth"), tmp_path, None)
    for err in (bad_settings.value, missing_resume.value):
        assert is_user_error(err), repr(err)


def test_demo_script_reports_a_bad_option_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    demo = _load(REPO / "scripts" / "demo.py")
    status = demo.main(["--out", str(tmp_path), "--n", "4", "--options", "run.init_lr=[0.1"])
    lines = [ln for ln in _error_lines(capsys.readouterr().err)]
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("scripts/demo.py: ") and "'run.init_lr=[0.1'" in lines[0], lines


# ---------------------------------------------------------------------------- the mechanism itself

def test_user_errors_and_programming_errors_are_told_apart() -> None:
    from minigpt4.common.config import ConfigError
    from minigpt4.datasets.records import DataFormatError, RecordError

    record = RecordError("a.json", 3, "missing key 'image'")
    assert is_user_error(record) and is_user_error(DataFormatError([record])) and is_user_error(ConfigError([]))
    assert is_user_error(UserError("x"))
    assert not is_user_error(ValueError("a plain ValueError may be a bug"))
    assert not is_user_error(KeyError("k")) and not is_user_error(TypeError("t"))

    def buggy(argv: object) -> int:
        raise TypeError("a bug")

    with pytest.raises(TypeError, match="a bug"):
        run_main(buggy, [], prog="x")


def test_run_main_prints_one_line_and_returns_2(capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from minigpt4.datasets.records import DataFormatError, RecordError

    def broken(argv: object) -> int:
        raise DataFormatError([RecordError("a.json", 3, "missing key 'image'"), RecordError("b.json", 0, "empty")])

    monkeypatch.delenv("RANK", raising=False)
    assert run_main(broken, [], prog="tool") == 2
    err = capsys.readouterr().err
    assert err == ("tool: 2 malformed record(s): a.json record #3: missing key 'image'; b.json record #0: empty. "
                   "Fix: fix the records, or set on_error: skip in the dataset config to skip them (they are "
                   "counted)\n")
    assert run_main(lambda argv: 0, []) == 0 and run_main(lambda argv: None, []) == 0
    monkeypatch.setenv("FACEGPT_TRACEBACK", "1")
    with pytest.raises(DataFormatError):
        run_main(broken, [], prog="tool")


def test_one_line_keeps_the_original_message_of_a_dataloader_worker_error() -> None:
    message = ("Caught ImageOpenError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    raise ImageOpenError(...)\n'
               "minigpt4.processors.image_io.ImageOpenError: cannot decode image /d/a.jpg: truncated\n")
    assert one_line(RuntimeError(message)) == "cannot decode image /d/a.jpg: truncated"
    import minigpt4.processors.image_io  # noqa: F401  (imported by the parent process of the workers)

    assert is_user_error(RuntimeError(message)), "torch re-raises it as a RuntimeError: still the user's image"
    assert not is_user_error(RuntimeError(message.replace("minigpt4.processors.image_io.ImageOpenError",
                                                          "ZeroDivisionError")))
    assert flatten("3 problem(s):\n  - a: x\n  - b: y\nFix: z") == "3 problem(s): a: x; b: y. Fix: z"
