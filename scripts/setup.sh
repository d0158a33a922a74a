#!/usr/bin/env bash
# Installs rlmed and the exact versions CI tests, on a CPU machine (the README's setup step).
# torch goes first: a bare `torch` requirement with no torch installed pulls the newest CUDA build (GBs).
# On a GPU machine, install the torch build for your CUDA yourself, then: pip install -e . -c constraints.txt
set -euo pipefail
cd "$(dirname "$0")/.."
want_torch=$(grep -E '^torch==' constraints.txt | cut -d= -f3)
have_torch=$(python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have_torch" != "$want_torch" ]; then
  pip install --quiet "torch==$want_torch"
fi
# DeepSpeed's ops are compiled just in time on first use; building them at install time needs CUDA.
DS_BUILD_OPS=0 pip install --quiet -e ".[test]" -c constraints.txt
# The review page's browser test drives headless Chromium (tests/review/test_browser.py): Debian's chromium and
# chromium-driver, installed here when missing and this runs as root; otherwise the test is skipped, saying why.
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver >/dev/null 2>&1; }
    # The package lists of a fresh container are often empty: update once, only when the first try fails.
    apt_install || { apt-get update -qq >/dev/null 2>&1 && apt_install; } ||
      echo "setup: apt-get could not install chromium and chromium-driver; the browser test will be skipped"
  else
    echo "setup: chromium and chromium-driver are missing (as root: apt-get install chromium chromium-driver);" \
      "the browser test will be skipped"
  fi
fi
python -c 'import rlmed, trl, deepspeed' 2>/dev/null && echo "rlmed installed: $(rlmed --help >/dev/null && echo ok)"
