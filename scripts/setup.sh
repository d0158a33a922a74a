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
python -c 'import rlmed, trl, deepspeed' 2>/dev/null && echo "rlmed installed: $(rlmed --help >/dev/null && echo ok)"
