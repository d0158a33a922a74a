#!/usr/bin/env bash
# Runs the test suite against what `pip install rlmed` resolves today, not constraints.txt's pins: the newest
# releases pyproject.toml allows (default, in .venv-latest) or, with --floors, its lower bounds exactly (every
# `name>=x` in [project] dependencies installed as `name==x`, in .venv-floors). Not part of CI (a fresh venv
# takes minutes, the suite half an hour); run it before raising a pin or a floor. Arguments after the mode go to
# pytest, so a subset works:  scripts/test-latest.sh tests/unit -x -q;  scripts/test-latest.sh --floors tests/unit
# torch stays at constraints.txt's version in both modes, installed as scripts/setup.sh does: its floor would
# pull a multi-GB CUDA build, and on a GPU machine torch is whatever matches the CUDA there.
# Environment: RLMED_VENV (the venv's folder), PYTHON (the interpreter that creates it; default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=latest
if [ "${1:-}" = "--floors" ]; then
  mode=floors
  shift
fi
venv=${RLMED_VENV:-.venv-$mode}
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
venv=$(cd "$venv" && pwd)
py=$venv/bin/python
pins=$(mktemp)
trap 'rm -f "$pins"' EXIT

want_torch=$(grep -E '^torch==' constraints.txt | cut -d= -f3)
have_torch=$("$py" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have_torch" != "$want_torch" ]; then
  "$py" -m pip install --quiet "torch==$want_torch"
fi
echo "torch==$want_torch" >"$pins"  # kept through --upgrade: a bare `torch>=...` would fetch the newest CUDA build

if [ "$mode" = latest ]; then
  # eager: a venv left from an earlier run gets today's releases of every dependency, not just rlmed
  DS_BUILD_OPS=0 "$py" -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[test]" -c "$pins"
else
  "$py" - >>"$pins" <<'EOF'
import re
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    for dep in tomllib.load(f)["project"]["dependencies"]:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([^,;\s]+)\s*", dep)
        if m is None:
            raise SystemExit(f"test-latest.sh --floors: cannot read a floor from {dep!r} (expected name>=version)")
        if m.group(1).lower() != "torch":
            print(f"{m.group(1)}=={m.group(2)}")
EOF
  echo "floors (torch: constraints.txt's):" $(tr '\n' ' ' <"$pins")
  # not --quiet: when the floors cannot be installed together, pip's account of the conflict is the result
  DS_BUILD_OPS=0 "$py" -m pip install -e ".[test]" -c "$pins"
fi

"$py" - <<'EOF'
from importlib.metadata import PackageNotFoundError, version
names = "torch transformers trl peft accelerate deepspeed datasets tokenizers openai wandb".split()
def of(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"
print("installed:", ", ".join(f"{name} {of(name)}" for name in names))
EOF
# The venv's tools first on PATH, for anything the tests start by name
export VIRTUAL_ENV=$venv PATH=$venv/bin:$PATH
exec "$py" -m pytest "$@"
