r"""Chat about an image with MiniGPT-4 v1 (Vicuna v0 or LLaMA-2) from the command line.

    python demo_v1_command_line.py --cfg-path eval_configs/minigpt4_eval.yaml --image face.jpg
    python demo_v1_command_line.py --cfg-path eval_configs/tiny_minigpt4_eval.yaml \
        --options model.llama_model=/tmp/tiny_llama --image face.jpg --prompt "Describe the face."

``--help`` lists the flags; ``/help`` in the chat lists the commands. MiniGPT-v2 configs: demo_v2_command_line.py.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the v1 demo; returns the exit status."""
    from minigpt4.conversation.cli import V1_DEMO, run_demo

    return run_demo(V1_DEMO, argv)


if __name__ == "__main__":
    sys.exit(main())
