r"""Chat about a face image in the browser (Gradio), with a MiniGPT-4 (v1) or MiniGPT-v2 config.

    python demo_web.py --cfg-path eval_configs/minigptv2_eval.yaml            # then open http://127.0.0.1:7860
    python demo_web.py --cfg-path eval_configs/tiny_minigpt_v2_eval.yaml --device cpu \
        --options model.llama_model=/tmp/tiny_llama --port 7861

Local by default (``--host 127.0.0.1``, no share link unless ``--share``, no analytics). Needs the ``web`` extra:
``pip install 'facegpt[web]'``. ``--help`` lists the flags.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the web chat until Ctrl-C; returns the exit status."""
    from minigpt4.web.app import main as web_main

    return web_main(argv)


if __name__ == "__main__":
    sys.exit(main())
