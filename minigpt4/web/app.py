"""The web chat behind ``demo_web.py``: upload a face image, ask, watch the answer stream in.

The page is a Gradio app around the chat engine of the command-line demos (:class:`~minigpt4.conversation.chat.Chat`
and one :class:`~minigpt4.conversation.session.ChatSession` per browser tab): the same model, prompt format, stop
rules and generation settings. One model serves every tab; image encoding and generation take turns (one at a
time), and each question carries that tab's generation settings (the shared engine's settings are never changed).

Local by default: it listens on ``--host 127.0.0.1``, makes no share link unless ``--share`` is given, sends no
analytics (``GRADIO_ANALYTICS_ENABLED=False``), and the page loads nothing from outside the server (fonts and
scripts come from the gradio package).

Exit status: 0 after a normal stop (Ctrl-C), 2 for a fault in the user's input (flags, ``--options``, config,
weights files, a port in use, gradio not installed), printed as one line.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from minigpt4.common.config import add_config_args, load_config
from minigpt4.common.errors import UserError, run_main
from minigpt4.common.logger import get_logger, setup_logging

logger = get_logger(__name__)

PROG = "demo_web.py"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
#: the ``concurrency_id`` of every event that runs the model: they take turns
MODEL_QUEUE = "facegpt-model"
INSTALL_HINT = "pip install 'facegpt[web]' (or: pip install gradio)"


class WebChatError(UserError):
    """The web chat cannot start with what the user gave (flags, config, port, missing gradio)."""


# ----------------------------------------------------------------------------------- the engine side


@dataclass
class TabState:
    """What one browser tab owns: its chat session (created on first use) and nothing else."""

    session: Any = None
    notes: List[str] = field(default_factory=list)


class WebChat:
    """The page's actions on the chat engine, independent of Gradio (the event handlers call these).

    Every action takes and returns the tab's :class:`TabState`; the chat history shown is the session's transcript
    as Gradio "messages" (``{"role", "content"}`` dicts).
    """

    def __init__(self, chat: Any, title: str) -> None:
        self.chat = chat
        self.title = title

    def defaults(self) -> Any:
        """The engine's generation settings (the page's initial values)."""
        return self.chat.settings

    def new_session(self) -> Any:
        """A fresh :class:`ChatSession` on the shared engine."""
        from minigpt4.conversation.session import ChatSession

        return ChatSession(self.chat)

    def _session(self, state: Optional[TabState]) -> TabState:
        state = state if isinstance(state, TabState) else TabState()
        if state.session is None:
            state.session = self.new_session()
        return state

    def load_image(self, state: Optional[TabState], image: Any) -> Tuple[TabState, List[Dict[str, str]], str]:
        """Encode ``image`` (a PIL image or path; None clears it) and start a new conversation about it."""
        state = self._session(state)
        if image is None:
            state.session = self.new_session()
            return state, [], "No image: upload one to start."
        state.session.load_image(image)
        return state, [], "Image loaded: new conversation. Ask a question."

    def reset(self, state: Optional[TabState]) -> Tuple[TabState, List[Dict[str, str]], str]:
        """A new conversation about the same image."""
        state = self._session(state)
        state.session.reset()
        note = "New conversation about the same image." if state.session.has_image else "No image: upload one."
        return state, [], note

    def settings_overrides(self, values: Dict[str, Any]) -> Dict[str, Any]:
        """The page's settings as overrides of the engine's (validated; raises ``SettingsError``)."""
        overrides = {k: v for k, v in values.items() if v is not None}
        for key in ("max_new_tokens", "num_beams"):
            if key in overrides:
                overrides[key] = int(overrides[key])
        if "seed" in overrides:
            overrides["seed"] = _seed(overrides["seed"])
        overrides["max_length"] = max(self.chat.settings.max_length, overrides.get("max_new_tokens", 0) + 1)
        self.chat.settings.replace(**overrides)  # validation only: the shared settings stay as they are
        return overrides

    def answer(self, state: Optional[TabState], question: str,
               settings: Dict[str, Any]) -> Iterator[Tuple[TabState, List[Dict[str, str]], str]]:
        """Ask ``question`` and yield the history as the answer streams in (the last item holds the whole answer)."""
        from minigpt4.conversation.cli import clean_question, escape_controls, is_blank

        state = self._session(state)
        question, _ = clean_question(question or "")
        if is_blank(question):
            raise WebChatError("the question is empty: type a question about the image")
        stream = state.session.stream(question.strip(), **self.settings_overrides(settings))
        history = history_of(state.session)
        try:
            shown = ""
            for piece in stream:
                shown += piece
                history[-1]["content"] = escape_controls(shown)
                yield state, history, "Answering..."
        finally:
            if stream.reply is None:  # the tab went away or Stop was pressed: end the generation now
                stream.cancel()
        reply = stream.reply
        note = "Done."
        if reply is not None and reply.dropped_turns:
            note = f"The conversation is long: the {reply.dropped_turns} oldest turn(s) were left out of the prompt."
        yield state, history_of(state.session), note


def _seed(value: Any) -> Optional[int]:
    """The seed box's value: empty means no seed; anything else must be a whole number."""
    from minigpt4.conversation.generation import SettingsError

    text = str(value).strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise SettingsError(f"seed must be a whole number or empty (got {text!r})") from None


def history_of(session: Any) -> List[Dict[str, str]]:
    """The session's turns as chat messages; an answer still being generated shows as empty. Control characters
    are shown escaped (``\\x00``), as the command-line demos show them (a browser would drop or mangle them)."""
    from minigpt4.conversation.cli import escape_controls

    messages: List[Dict[str, str]] = []
    for turn in session.turns():
        messages.append({"role": "user", "content": escape_controls(turn["user"] or "")})
        messages.append({"role": "assistant", "content": escape_controls(turn["assistant"] or "")})
    return messages


# ------------------------------------------------------------------------------------------ the page

SETTING_NAMES = ("do_sample", "temperature", "top_p", "num_beams", "max_new_tokens", "repetition_penalty", "seed")


def build_blocks(web: WebChat) -> Any:
    """The Gradio page: image, chat, question box, Send / Stop / Reset, generation settings."""
    import gradio as gr

    d = web.defaults()
    with gr.Blocks(title=web.title, analytics_enabled=False) as blocks:
        gr.Markdown(f"## FaceGPT web chat\n{web.title}: upload a face image, then ask about it.")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="pil", label="Image", elem_id="facegpt-image", sources=["upload", "clipboard"])
                with gr.Accordion("Generation settings", open=False, elem_id="facegpt-settings"):
                    controls = [
                        gr.Checkbox(value=d.do_sample, label="do_sample (sample instead of greedy)",
                                    elem_id="facegpt-do-sample"),
                        gr.Slider(0.05, 2.0, value=d.temperature, step=0.05, label="temperature (sampling)"),
                        gr.Slider(0.05, 1.0, value=d.top_p, step=0.05, label="top_p (sampling)"),
                        gr.Slider(1, 10, value=d.num_beams, step=1, label="num_beams (beams: no streaming)"),
                        gr.Slider(1, 2000, value=d.max_new_tokens, step=1, label="max_new_tokens",
                                  elem_id="facegpt-max-new-tokens"),
                        gr.Slider(0.5, 2.0, value=d.repetition_penalty, step=0.01, label="repetition_penalty"),
                        gr.Textbox(value="" if d.seed is None else str(d.seed), elem_id="facegpt-seed",
                                   label="seed (sampling; empty: a different answer each time)"),
                    ]
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Conversation", elem_id="facegpt-chatbot", render_markdown=False,
                                     height=420, feedback_options=None, buttons=["copy", "copy_all"])
                question = gr.Textbox(label="Question", placeholder="Ask about the face and press Enter",
                                      elem_id="facegpt-question")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="facegpt-send")
                    stop = gr.Button("Stop", elem_id="facegpt-stop")
                    reset = gr.Button("Reset", elem_id="facegpt-reset")
                status = gr.Markdown("No image: upload one to start.", elem_id="facegpt-status")
        _wire(web, state, image, question, chatbot, status, controls, send, stop, reset)
    return blocks


def _wire(web: WebChat, state: Any, image: Any, question: Any, chatbot: Any, status: Any, controls: List[Any],
          send: Any, stop: Any, reset: Any) -> None:
    """Connect the page's events to :class:`WebChat` (model-using events share one queue)."""
    import gradio as gr

    def on_image(tab: Any, img: Any) -> Tuple[Any, Any, str]:
        with _shown_as_gradio_error(gr):
            return web.load_image(tab, img)

    def on_ask(tab: Any, text: str, *values: Any) -> Iterator[Tuple[Any, Any, str, str]]:
        with _shown_as_gradio_error(gr):
            for tab, history, note in web.answer(tab, text, dict(zip(SETTING_NAMES, values))):
                yield tab, history, note, ""

    def on_reset(tab: Any) -> Tuple[Any, Any, str]:
        return web.reset(tab)

    model_queue = dict(concurrency_id=MODEL_QUEUE, concurrency_limit=1)
    image.upload(on_image, [state, image], [state, chatbot, status], **model_queue)
    image.clear(on_image, [state, image], [state, chatbot, status], **model_queue)
    asks = [trigger(on_ask, [state, question, *controls], [state, chatbot, status, question], **model_queue)
            for trigger in (send.click, question.submit)]
    stop.click(None, None, None, cancels=asks)
    reset.click(on_reset, [state], [state, chatbot, status], cancels=asks)
    chatbot.clear(on_reset, [state], [state, chatbot, status], cancels=asks)  # its trash button: a new conversation


class _shown_as_gradio_error:
    """Turn a fault in the user's input (no image, empty question, bad setting, unreadable image) into a message
    on the page (``gr.Error``) instead of a failed request."""

    def __init__(self, gr: Any) -> None:
        self.gr = gr

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, err: Any, tb: Any) -> bool:
        from minigpt4.common.errors import is_user_error, one_line
        from minigpt4.conversation.chat import ContextTooLongError
        from minigpt4.conversation.session import NoImageError

        if err is not None and (is_user_error(err) or isinstance(err, (NoImageError, ContextTooLongError))):
            raise self.gr.Error(one_line(err)) from err
        return False


# ------------------------------------------------------------------------------------- command line

ARCH_TITLES = {"minigpt4": "MiniGPT-4 (v1)", "minigpt_v2": "MiniGPT-v2"}


def build_parser() -> argparse.ArgumentParser:
    """``demo_web.py``'s flags."""
    parser = argparse.ArgumentParser(prog=PROG, description="Chat about a face image in the browser (Gradio), with "
                                     "a MiniGPT-4 (v1) or MiniGPT-v2 config.")
    add_config_args(parser, require_cfg=True)
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default 127.0.0.1: this machine "
                        "only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:1 (default: cuda:<gpu-id> if available)")
    parser.add_argument("--gpu-id", type=int, default=0, help="CUDA device index when --device is not given")
    parser.add_argument("--template", help="override the conversation template (as the command-line demos)")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return parser


@dataclass
class WebApp:
    """A built web chat: the engine side and the Gradio page."""

    web: WebChat
    blocks: Any


def import_gradio() -> Any:
    """Gradio, with its analytics and version check off; a clear error when it is not installed."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError as err:
        raise WebChatError(f"the web chat needs gradio ({err}): {INSTALL_HINT}") from None
    return gradio


def create_app(cfg_path: str, options: Optional[Sequence[str]] = None, device: Optional[str] = None,
               gpu_id: int = 0, template: Optional[str] = None) -> WebApp:
    """Load the config, build the chat engine exactly as the command-line demo of its arch does, build the page."""
    from minigpt4.conversation.cli import V1_DEMO, V2_DEMO, default_settings
    from minigpt4.conversation.factory import chat_from_config, resolve_device

    import_gradio()  # fail before the (slow) model build
    if not Path(cfg_path).is_file():
        raise WebChatError(f"--cfg-path {cfg_path}: no such file; give an eval config, e.g. "
                           "eval_configs/minigptv2_eval.yaml")
    cfg = load_config(cfg_path, options, check_dataset_paths=False)  # chat reads no dataset
    arch = cfg.model.arch
    specs = {"minigpt4": V1_DEMO, "minigpt_v2": V2_DEMO}
    if arch not in specs:
        raise WebChatError(f"{cfg_path}: model.arch={arch!r} has no chat; the web chat runs {sorted(specs)}")
    torch_device = resolve_device(device, gpu_id)
    logger.info("building %s (%s) on %s from %s", arch, cfg.model.model_type, torch_device, cfg_path)
    chat = chat_from_config(cfg, torch_device, default_settings(specs[arch]), template)
    web = WebChat(chat, f"{ARCH_TITLES[arch]} from {Path(cfg_path).name}")
    return WebApp(web, build_blocks(web))


def launch(app: WebApp, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, share: bool = False,
           block: bool = True, quiet: bool = False) -> str:
    """Serve the page (``block=False`` returns at once, e.g. in tests); returns the local URL."""
    app.blocks.queue(default_concurrency_limit=1)
    try:
        _, local_url, _ = app.blocks.launch(server_name=host, server_port=port, share=share, ssr_mode=False,
                                            prevent_thread_lock=not block, quiet=quiet, pwa=False,
                                            footer_links=[], mcp_server=False)
    except OSError as err:
        raise WebChatError(f"cannot listen on {host}:{port} ({err}); pass a free --port, e.g. --port "
                           f"{port + 1}") from None
    return local_url


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``demo_web.py``: build the chat and serve it until Ctrl-C; returns the exit status."""
    return run_main(_main, argv, prog=PROG)


def _main(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.WARNING if args.quiet else logging.INFO)
    if not 0 < args.port < 65536:
        raise WebChatError(f"--port {args.port} is not a port number (1-65535)")
    app = create_app(args.cfg_path, args.options, args.device, args.gpu_id, args.template)
    if args.share:
        logger.warning("--share: the chat gets a public gradio.live link; anyone with it can use the model")
    try:
        launch(app, args.host, args.port, args.share, block=True, quiet=args.quiet)
    except KeyboardInterrupt:
        pass
    finally:
        app.blocks.close()
    return 0
