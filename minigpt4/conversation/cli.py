"""The command-line chat front end behind ``demo_v1_command_line.py`` and ``demo_v2_command_line.py``.

Two modes:

* **interactive** (standard input is a terminal and no ``--prompt``): a line-edited prompt with history
  (``readline``; the history file defaults to ``~/.cache/facegpt/chat_history``), answers streamed as they are
  generated, and slash commands (``/help`` lists them). Ctrl-C during an answer stops that answer; Ctrl-C or
  Ctrl-D at the prompt leaves (exit status 0). Errors print one line and the prompt comes back.
* **one-shot** (``--prompt`` given, or standard input not a terminal): each ``--prompt`` (or each non-empty line
  of standard input) is a question about ``--image``; the answers are printed to standard output, nothing else
  (logs go to standard error). ``--format text`` prints one answer per line (an answer that itself spans several
  lines keeps its line breaks: use ``--format jsonl`` to parse reliably); ``--format jsonl`` prints one JSON
  object ``{"question", "answer"}`` per line. Questions share one conversation unless ``--independent``.

Input and output: questions are text; bytes that are not UTF-8 (typed, piped or in ``--prompt``) are replaced by
U+FFFD with a note, and the chat goes on. An empty question (nothing visible) is refused with a message.
Control characters in an answer (escape sequences, carriage returns, bidirectional overrides) are shown escaped
(``\\x1b``); line breaks and tabs are kept. The saved transcript (``/save``) holds the answers unchanged.

Exit status: 0 success, 1 a runtime error (generation, device, an unexpected failure), 2 a usage error or a fault
in the user's input (flags, ``--options``, config, image, weights files), 130 interrupted (one-shot). Every error
is one line on standard error, ``error: ...``; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import shlex
import signal
import sys
import threading
import unicodedata
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, TextIO, Tuple

from omegaconf import OmegaConf

from minigpt4.common.config import add_config_args, load_config, parse_options
from minigpt4.common.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USER_ERROR, is_user_error
from minigpt4.common.errors import one_line as _error_line
from minigpt4.common.logger import get_logger, setup_logging
from minigpt4.conversation.chat import ContextTooLongError
from minigpt4.conversation.conversation import TEMPLATES
from minigpt4.conversation.factory import chat_from_config, resolve_device
from minigpt4.conversation.generation import GenerationSettings, SettingsError
from minigpt4.conversation.session import ChatSession, NoImageError
from minigpt4.processors.image_io import ImageOpenError

logger = get_logger(__name__)

EXIT_RUNTIME, EXIT_USAGE = EXIT_FAILURE, EXIT_USER_ERROR
_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DemoSpec:
    """What distinguishes the two demos: name, default config, accepted model archs, generation defaults."""

    prog: str
    title: str
    default_cfg: str
    archs: Tuple[str, ...]
    other_demos: Tuple[Tuple[str, str], ...]  # (arch, script to use for it)
    max_new_tokens: int
    temperature: float


V1_DEMO = DemoSpec("demo_v1_command_line.py", "MiniGPT-4 (v1, Vicuna v0 or LLaMA-2)", "eval_configs/minigpt4_eval.yaml",
                   ("minigpt4",), (("minigpt_v2", "demo_v2_command_line.py"),), max_new_tokens=300, temperature=1.0)
V2_DEMO = DemoSpec("demo_v2_command_line.py", "MiniGPT-v2", "eval_configs/minigptv2_eval.yaml",
                   ("minigpt_v2",), (("minigpt4", "demo_v1_command_line.py"),), max_new_tokens=500, temperature=0.6)

HELP_TEXT = """commands:
  /image PATH      load another image (starts a new conversation)
  /reset           start a new conversation about the current image
  /show            show the transcript
  /save FILE       save the transcript (FILE.json: JSON, anything else: text)
  /set [k=v ...]   show or change generation settings, e.g. /set do_sample=true temperature=0.7
  /help            this help
  /quit            leave (also Ctrl-D, or Ctrl-C at the prompt)
anything else is a question about the image; Ctrl-C while an answer is printed stops it."""


class DemoError(Exception):
    """An error reported as one line with an exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def one_line(err: BaseException) -> str:
    """An exception's message on one line."""
    return _error_line(err)


# ----------------------------------------------------------------------------- text in and out

#: C0/C1 control characters except newline and tab, and the bidirectional embedding/override/isolate marks
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_C1_OR_DEL = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_INVISIBLE = {"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"}


def escape_controls(text: str) -> str:
    """``text`` safe for a terminal: control characters shown as escapes (``\\x1b``, ``\\r``, ``\\u202e``);
    newlines and tabs kept."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def json_line(record: Dict[str, Any]) -> str:
    """One JSON line with every control character escaped (JSON escapes C0 itself; DEL, C1 and bidi marks too)."""
    text = json.dumps(record, ensure_ascii=False)
    return _C1_OR_DEL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def clean_question(text: str) -> Tuple[str, bool]:
    """``(text, replaced)``: bytes that were not UTF-8 (surrogate escapes from the terminal, a pipe or ``argv``)
    become U+FFFD, so the tokenizer gets valid text; ``replaced`` tells whether there were any."""
    if not any("\ud800" <= ch <= "\udfff" for ch in text):
        return text, False
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), True
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text), True


def is_blank(text: str) -> bool:
    """True when ``text`` shows nothing: empty, spaces, control or format characters only."""
    return all(unicodedata.category(ch) in _INVISIBLE for ch in text)


NOT_UTF8_NOTE = "bytes that are not UTF-8 text were replaced by U+FFFD"
EMPTY_QUESTION = "the question is empty (nothing visible to ask); type a question, or /help"


# ------------------------------------------------------------------------------------ parsing


def build_parser(spec: DemoSpec) -> argparse.ArgumentParser:
    """The demo's argument parser (generation defaults come from :class:`GenerationSettings`)."""
    d = default_settings(spec)
    parser = argparse.ArgumentParser(
        prog=spec.prog, description=f"Chat about an image with {spec.title}.", epilog=HELP_TEXT,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, require_cfg=False)
    parser.set_defaults(cfg_path=None)
    parser.add_argument("--image", help="image to talk about (interactive: /image PATH loads another)")
    parser.add_argument("--gpu-id", type=int, default=0, help="CUDA device index when --device is not given")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:1 (default: cuda:<gpu-id> if available)")
    parser.add_argument("--template", choices=sorted(TEMPLATES), help="override the conversation template")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    gen.add_argument("--max-length", type=int, default=d.max_length, help="bound of prompt + answer positions")
    gen.add_argument("--temperature", type=float, default=d.temperature, help="sampling only")
    gen.add_argument("--top-p", type=float, default=d.top_p, help="sampling only")
    gen.add_argument("--num-beams", type=int, default=d.num_beams)
    gen.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty)
    mode = gen.add_mutually_exclusive_group()
    mode.add_argument("--sample", dest="do_sample", action="store_true", help="sample (temperature, top-p)")
    mode.add_argument("--greedy", dest="do_sample", action="store_false", help="greedy decoding (default)")
    parser.set_defaults(do_sample=d.do_sample)
    gen.add_argument("--seed", type=int, default=d.seed, help="reseed before every sampled answer")
    shot = parser.add_argument_group("one-shot mode")
    shot.add_argument("--prompt", action="append", help="a question (repeatable); prints the answers and exits")
    shot.add_argument("--format", choices=("text", "jsonl"), default="text", help="answer output format")
    shot.add_argument("--independent", action="store_true", help="answer every question in a fresh conversation")
    parser.add_argument("--history-file", help="readline history (default ~/.cache/facegpt/chat_history)")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def default_settings(spec: DemoSpec) -> GenerationSettings:
    """The demo's generation defaults (upstream's per-demo max_new_tokens and temperature)."""
    return GenerationSettings(max_new_tokens=spec.max_new_tokens, temperature=spec.temperature)


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    """Generation settings from the parsed flags (raises :class:`SettingsError` on invalid values)."""
    names = {f.name for f in fields(GenerationSettings)}
    return GenerationSettings(**{k: v for k, v in vars(args).items() if k in names})


def resolve_cfg_path(spec: DemoSpec, cfg_path: Optional[str]) -> Path:
    """``--cfg-path``, or the demo's default config (looked up in the working directory, then the repository)."""
    if cfg_path:
        return Path(cfg_path)
    for base in (Path.cwd(), _REPO_ROOT):
        if (base / spec.default_cfg).is_file():
            return base / spec.default_cfg
    raise DemoError(f"no --cfg-path given and the default {spec.default_cfg} is not in {Path.cwd()}", EXIT_USAGE)


def check_arch(spec: DemoSpec, cfg_path: Path, options: Optional[Sequence[str]]) -> None:
    """Refuse a config made for the other demo, before anything heavy is loaded."""
    try:
        raw = OmegaConf.merge(OmegaConf.load(cfg_path), parse_options(options))
        arch = OmegaConf.select(raw, "model.arch")
    except Exception:  # unreadable YAML or bad --options: load_config reports it with details
        return
    for other_arch, script in spec.other_demos:
        if arch == other_arch:
            raise DemoError(f"{cfg_path} is a model.arch={arch} config; this demo runs {'/'.join(spec.archs)}: "
                            f"use {script}", EXIT_USAGE)


# -------------------------------------------------------------------------------------- main


def run_demo(spec: DemoSpec, argv: Optional[Sequence[str]] = None, stdin: Optional[TextIO] = None,
             stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    """Parse ``argv``, build the chat, run the interactive or one-shot mode; returns the exit status."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    parser = build_parser(spec)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse printed the usage message
        return int(exit_.code or 0)
    setup_logging(logging.WARNING if args.quiet else logging.INFO, stream=stderr)
    _quiet_library_noise(args.quiet)
    _tolerate_undecodable_text(stdin, stdout, stderr)
    one_shot = bool(args.prompt) or not _isatty(stdin)
    try:
        try:
            session = _start(spec, args, one_shot)
            if one_shot:
                return _run_one_shot(session, args, stdin, stdout)
            _enable_ctrl_c()
            return InteractiveChat(session, stdout, stderr, args.history_file, stdin, args.image).run()
        except Exception as err:
            if args.debug:
                raise
            raise _as_demo_error(err) from err
    except DemoError as err:
        stderr.write(f"error: {err}\n")
        stderr.flush()
        return err.status
    except KeyboardInterrupt:
        stderr.write("\ninterrupted\n")
        return EXIT_INTERRUPTED


def _tolerate_undecodable_text(stdin: TextIO, *outputs: TextIO) -> None:
    """Read bytes that are not UTF-8 as surrogate escapes (:func:`clean_question` turns them into U+FFFD) instead
    of raising in ``input()``; write what the output encoding cannot hold as backslash escapes."""
    for stream, errors in ((stdin, "surrogateescape"), *((out, "backslashreplace") for out in outputs)):
        reconfigure = getattr(stream, "reconfigure", None)
        if callable(reconfigure):
            try:
                reconfigure(errors=errors)
            except (ValueError, OSError, io.UnsupportedOperation):  # a closed or special stream: leave it
                pass


def _enable_ctrl_c() -> None:
    """Make Ctrl-C raise KeyboardInterrupt even when SIGINT arrived ignored.

    A program started in the background by a non-interactive shell (``cmd &`` in a script, some launchers)
    inherits SIGINT as ignored, and Python then installs no handler: Ctrl-C would not stop an answer.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _quiet_library_noise(quiet: bool) -> None:
    """Silence what would clutter a chat: transformers' per-answer repetition-penalty notice (the penalty applies to
    the generated tokens, as documented), and its weight-loading progress bars with ``--quiet``."""
    warnings.filterwarnings("ignore", message=r"Passing `repetition_penalty` with `inputs_embeds`")
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _start(spec: DemoSpec, args: argparse.Namespace, one_shot: bool) -> ChatSession:
    """Check the cheap things first (flags, config, image path), then build the model and load the image."""
    settings = settings_from_args(args)
    if one_shot:  # fail before the (slow) model build; interactive mode reports a bad --image and goes on
        args.prompt = _checked_prompts(args.prompt or [])
        if not args.image:
            raise DemoError("one-shot mode (--prompt or questions on standard input) needs --image PATH", EXIT_USAGE)
        if Path(args.image).expanduser().is_dir():
            raise DemoError(f"--image {args.image} is a folder, not an image file", EXIT_USAGE)
        if not Path(args.image).expanduser().is_file():
            raise DemoError(f"image file not found: {args.image}", EXIT_USAGE)
    cfg_path = resolve_cfg_path(spec, args.cfg_path)
    check_arch(spec, cfg_path, args.options)
    cfg = load_config(cfg_path, args.options, check_dataset_paths=False)  # chat reads no dataset
    if cfg.model.arch not in spec.archs:
        raise DemoError(f"{spec.prog} runs model.arch {'/'.join(spec.archs)}, not {cfg.model.arch!r}", EXIT_USAGE)
    device = resolve_device(args.device, args.gpu_id)
    logger.info("building %s (%s) on %s from %s", cfg.model.arch, cfg.model.model_type, device, cfg_path)
    session = ChatSession(chat_from_config(cfg, device, settings, args.template))
    if one_shot:
        session.load_image(Path(args.image).expanduser())
    return session


def _checked_prompts(prompts: Sequence[str]) -> list:
    """``--prompt`` questions with undecodable bytes replaced; an empty one is a usage error."""
    checked = []
    for i, prompt in enumerate(prompts, 1):
        text, replaced = clean_question(prompt)
        if is_blank(text):
            raise DemoError(f"--prompt #{i} is empty (nothing visible to ask); give a question", EXIT_USAGE)
        if replaced:
            logger.warning("--prompt #%d: %s", i, NOT_UTF8_NOTE)
        checked.append(text.strip())
    return checked


def _as_demo_error(err: Exception) -> DemoError:
    """Map an exception to a one-line message and exit status: 2 for a fault in the user's input (config, flags,
    image, weights files; see :func:`minigpt4.common.errors.is_user_error`), 1 for anything else."""
    if isinstance(err, DemoError):
        return err
    if is_user_error(err):  # ConfigError, SettingsError, TemplateError, ChatSetupError, ImageOpenError, ...
        return DemoError(one_line(err), EXIT_USAGE)
    if isinstance(err, (OSError, ValueError, RuntimeError, KeyError, ImportError)):
        return DemoError(f"{type(err).__name__}: {one_line(err)} (run with --debug for the traceback)", EXIT_RUNTIME)
    return DemoError(f"{type(err).__name__}: {one_line(err)}", EXIT_RUNTIME)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _run_one_shot(session: ChatSession, args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    """Answer every ``--prompt`` (or stdin line) and print only the answers."""
    questions = list(args.prompt or []) or _stdin_questions(stdin)
    if not questions:
        logger.warning("no questions: give --prompt or write questions on standard input, one per line")
    for i, question in enumerate(questions):
        if args.independent and i:
            session.reset()
        reply = session.ask(question)
        if args.format == "jsonl":
            stdout.write(json_line({"question": question, "answer": reply.text}) + "\n")
        else:
            stdout.write(escape_controls(reply.text) + "\n")
        stdout.flush()
    return EXIT_OK


def _stdin_questions(stdin: TextIO) -> list:
    """The questions on standard input, one per line: blank lines skipped, lines with nothing visible refused with
    a note, undecodable bytes replaced (with a note)."""
    questions = []
    for number, line in enumerate(stdin, 1):
        text, replaced = clean_question(line.strip())
        if replaced:
            logger.warning("standard input line %d: %s", number, NOT_UTF8_NOTE)
        if text and is_blank(text):
            logger.warning("standard input line %d: %s", number, EMPTY_QUESTION.split(";")[0] + "; skipped")
        elif text:
            questions.append(text)
    return questions


# ------------------------------------------------------------------------------- interactive


def default_history_file() -> Path:
    """``$XDG_CACHE_HOME/facegpt/chat_history`` (``~/.cache`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facegpt" / "chat_history"


class InteractiveChat:
    """The read-answer loop with slash commands (see :data:`HELP_TEXT`)."""

    prompt = "You: "

    def __init__(self, session: ChatSession, out: TextIO, err: TextIO, history_file: Optional[str] = None,
                 stdin: Optional[TextIO] = None, image: Optional[str] = None) -> None:
        self.session = session
        self.initial_image = image
        self.out, self.err = out, err
        self.stdin = stdin or sys.stdin
        self.history_file = Path(history_file).expanduser() if history_file else default_history_file()
        self._readline: Any = None
        self.commands: Dict[str, Any] = {
            "/image": self.cmd_image, "/reset": self.cmd_reset, "/show": self.cmd_show, "/save": self.cmd_save,
            "/set": self.cmd_set, "/help": self.cmd_help, "/quit": None, "/exit": None,
        }

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def error(self, text: str) -> None:
        self.out.flush()
        self.err.write(f"error: {text}\n")
        self.err.flush()

    def run(self) -> int:
        """Loop until /quit, EOF or Ctrl-C at the prompt; returns 0."""
        self._setup_readline()
        self.say(f"FaceGPT chat ({self.session.conv.name} template). /help for commands.")
        if self.initial_image:
            self.command(f"/image {self.initial_image}")
        if not self.session.has_image:
            self.say("No image loaded yet: /image PATH loads one.")
        try:
            while True:
                try:
                    line = self._read_line()
                except (EOFError, KeyboardInterrupt):
                    self.say("")
                    return EXIT_OK
                except UnicodeDecodeError:  # a stream that cannot be told to tolerate undecodable bytes
                    self.error("the line is not UTF-8 text; type it again")
                    continue
                line = line.strip()
                if not line:
                    continue
                if line.startswith("/"):
                    if not self.command(line):
                        return EXIT_OK
                    continue
                self.ask(line)
        finally:
            self._save_history()

    def _read_line(self) -> str:
        if self.stdin is sys.stdin:
            return input(self.prompt)
        self.out.write(self.prompt)
        self.out.flush()
        line = self.stdin.readline()
        if not line:
            raise EOFError
        return line

    def command(self, line: str) -> bool:
        """Run a slash command; False means leave."""
        name, _, rest = line.partition(" ")
        if name not in self.commands:
            self.error(f"unknown command {name}; /help lists the commands")
            return True
        handler = self.commands[name]
        if handler is None:
            return False
        try:
            handler(rest.strip())
        except (ImageOpenError, SettingsError, OSError, ValueError) as err:
            self.error(one_line(err))
        return True

    def cmd_image(self, arg: str) -> None:
        path = _unquote(arg)
        if not path:
            raise ValueError("usage: /image PATH")
        self.session.load_image(Path(path).expanduser())
        self.say(f"Loaded {path}; new conversation.")

    def cmd_reset(self, arg: str) -> None:
        self.session.reset()
        self.say("New conversation" + (f" about {self.session.image_source}." if self.session.has_image else "."))

    def cmd_show(self, arg: str) -> None:
        self.say(escape_controls(self.session.transcript_text()))

    def cmd_save(self, arg: str) -> None:
        path = _unquote(arg)
        if not path:
            raise ValueError("usage: /save FILE (FILE.json for JSON)")
        self.say(f"Saved the transcript to {self.session.save(path)}.")

    def cmd_set(self, arg: str) -> None:
        chat = self.session.chat
        if arg:
            chat.settings = chat.settings.with_assignments(shlex.split(arg))
        self.say(chat.settings.describe())

    def cmd_help(self, arg: str) -> None:
        self.say(HELP_TEXT)

    def ask(self, line: str) -> None:
        """Answer a typed question: undecodable bytes replaced (with a note), an empty question refused."""
        question, replaced = clean_question(line)
        if replaced:
            self.error(f"note: {NOT_UTF8_NOTE}")
        if is_blank(question):
            self.error(EMPTY_QUESTION)
            return
        self.answer(question)

    def answer(self, question: str) -> None:
        """Stream the answer to ``question``; Ctrl-C stops it and keeps what was printed."""
        try:
            stream = self.session.stream(question)
        except (NoImageError, ContextTooLongError, SettingsError) as err:
            self.error(one_line(err))
            return
        self.out.write("Assistant: ")
        self.out.flush()
        try:
            for piece in stream:
                self.out.write(escape_controls(piece))
                self.out.flush()
        except KeyboardInterrupt:
            _cancel_quietly(stream)
            self.out.write(" [stopped]")
        except Exception as err:  # a failure inside generation: report it and keep the chat alive
            self.say("")
            self.error(f"{type(err).__name__}: {one_line(err)}")
            return
        self.say("")
        reply = stream.reply
        if reply is not None and reply.dropped_turns:
            self.error(f"note: the conversation is long; the {reply.dropped_turns} oldest turn(s) were left out of "
                       "the prompt (/reset starts afresh)")

    # ------------------------------------------------------------------------------ readline
    def _setup_readline(self) -> None:
        if self.stdin is not sys.stdin:
            return
        try:
            import readline
        except ImportError:  # e.g. Windows without pyreadline: plain input() still works
            return
        self._readline = readline
        readline.set_history_length(1000)
        try:
            readline.read_history_file(str(self.history_file))
        except OSError:
            pass

    def _save_history(self) -> None:
        if self._readline is None:
            return
        try:
            self.history_file.parent.mkdir(parents=True, exist_ok=True)
            self._readline.write_history_file(str(self.history_file))
        except OSError as err:
            logger.warning("cannot write the chat history %s: %s", self.history_file, err)


def _cancel_quietly(stream: Any) -> None:
    """Cancel a stream, ignoring further Ctrl-C presses until the generation thread has stopped."""
    while True:
        try:
            stream.cancel()
            return
        except KeyboardInterrupt:
            continue


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text
