#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: the system packages FFCV builds
# against, a .venv, and labelopt installed editable with its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in pkg-config libopencv-dev libturbojpeg0-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# Skip pip when the installed package already matches pyproject.toml.
stamp=.venv/.labelopt-installed
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(sha256sum pyproject.toml | cut -d' ' -f1)" ]; then
  exit 0
fi
# pip's chatter goes to a log, shown only when a step fails.
log=.venv/setup.log
: > "$log"
pip_install() {
  if ! .venv/bin/python -m pip install -q "$@" >>"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "setup: pip install $* failed (full log: $log)" >&2
    exit 1
  fi
}
echo "setup: installing Python packages into .venv (first time: a few minutes)"
pip_install --upgrade pip
# torch first and pinned: an unpinned resolve pulls several GB of CUDA wheels.
pip_install "torch==2.14.1" "torchvision==0.29.1"
# ffcv builds from source against numpy, OpenCV and libturbojpeg; it needs these at build time.
pip_install numpy "setuptools<81" wheel pkgconfig Cython
pip_install --no-build-isolation "ffcv==1.0.2"
pip_install -e '.[dev]'
sha256sum pyproject.toml | cut -d' ' -f1 > "$stamp"
