r"""Chat about an image with MiniGPT-v2 from the command line.

    python demo_v2_command_line.py --cfg-path eval_configs/minigptv2_eval.yaml --image face.jpg
    python demo_v2_command_line.py --cfg-path eval_configs/tiny_minigpt_v2_eval.yaml \
        --options model.llama_model=/tmp/tiny_llama --image face.jpg --prompt "[vqa] How old is this person?"

``--help`` lists the flags; ``/help`` in the chat lists the commands. MiniGPT-4 v1 configs: demo_v1_command_line.py.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the v2 demo; returns the exit status."""
    from minigpt4.conversation.cli import V2_DEMO, run_demo

    return run_demo(V2_DEMO, argv)


if __name__ == "__main__":
    sys.exit(main())
