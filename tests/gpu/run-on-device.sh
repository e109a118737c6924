#!/usr/bin/env bash
# gpuhub's checks on a real GPU (tests/gpu, marker `gpu`), in one go on a bare GPU machine.
#
#   tests/gpu/run-on-device.sh            # on the GPU machine: set Python up, run, report
#   tests/gpu/run-on-device.sh --prepare  # beforehand, where PyPI answers: the wheels the GPU
#                                         # machine lacks, into .whl/ (git-ignored; carry it)
#   tests/gpu/run-on-device.sh --plan     # say how Python would be set up; change nothing
#
# On a machine lent through the workplace's device tool (no registry reachable there):
#   run(command="bash tests/gpu/run-on-device.sh", carry=[".whl"])  -> $OUT/gpu-report.json
#
# Python: the checks need gpuhub's node side (pynvml, prometheus_client, tornado, traitlets) and
# pytest. Where python3 already has them, nothing is installed. Else, with wheels in .whl/ (made
# by --prepare and carried), they are installed offline into a folder on PYTHONPATH, beside the
# machine's own packages (its PyTorch stays usable); else a venv is made and `pip install -e
# .[test,node]` fetches them from PyPI. A lent machine reaches no registry: carry .whl there.
#
# The JSON report of figures goes to $OUT/gpu-report.json (else a temporary folder) with the
# pytest log beside it, and is printed. Exit status: pytest's (0 when every check passed or
# skipped with its reason), 2 when Python cannot be set up. The run stays under 9 minutes.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
py=${GPUHUB_GPU_PYTHON:-python3}
wheels=${GPUHUB_GPU_WHEELS:-$repo/.whl}
site=${GPUHUB_GPU_SITE:-/tmp/gpuhub-gpu-site}
venv=${GPUHUB_GPU_VENV:-/tmp/gpuhub-gpu-venv}
needs=${GPUHUB_GPU_NEEDS:-pynvml prometheus_client tornado traitlets pytest}
# what --prepare fetches: the node extra's packages (pyproject.toml) the GPU image may lack
carried=${GPUHUB_GPU_CARRIED:-traitlets tornado docker nvidia-ml-py prometheus-client}
limit=${GPUHUB_GPU_TIMEOUT:-540}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

say() { printf '[gpu-checks] %s\n' "$*" >&2; }

missing() {  # the modules of $needs that "$1" cannot import
  # shellcheck disable=SC2086 # one word per module
  "$1" -c 'import importlib.util, sys; print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' $needs
}

have_wheels() { compgen -G "$wheels/*.whl" >/dev/null; }

plan() {  # how Python is set up here: wheels | ready | online
  if have_wheels; then echo wheels
  elif [ -z "$(missing "$py")" ]; then echo ready
  else echo online
  fi
}

prepare() {  # here, with PyPI: the wheels for the GPU machine's Python (3.12, x86-64)
  local local_py=python3 pins=() name version
  [ -x "$repo/.venv/bin/python" ] && local_py=$repo/.venv/bin/python
  for name in $carried; do  # the versions tested here
    version=$("$local_py" -c 'import sys; from importlib.metadata import version; print(version(sys.argv[1]))' "$name")
    pins+=("$name==$version")
  done
  mkdir -p "$wheels"
  "$local_py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$wheels" "${pins[@]}"
  local exclude
  exclude=$(git rev-parse --path-format=absolute --git-path info/exclude 2>/dev/null || true)
  if [ "$wheels" = "$repo/.whl" ] && [ -n "$exclude" ] && ! grep -qx '/.whl/' "$exclude" 2>/dev/null; then
    mkdir -p "$(dirname "$exclude")" && echo '/.whl/' >>"$exclude"  # never committed
  fi
  say "wheels in $wheels: $(cd "$wheels" && echo *.whl)"
  say "carry it: run(command='bash tests/gpu/run-on-device.sh', carry=['.whl'])"
}

setup_python() {
  local how
  how=$(plan)
  say "python: $("$py" -c 'import sys; print(sys.executable, sys.version.split()[0])'); setup: $how"
  case $how in
    wheels)
      "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
      export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
      ;;
    online)
      "$py" -m venv --system-site-packages "$venv"
      if ! "$venv/bin/python" -m pip install -q --timeout 20 --retries 1 -e ".[test,node]"; then
        say "PyPI cannot be reached and no wheels are in $wheels: run tests/gpu/run-on-device.sh --prepare"
        say "on a machine with PyPI and carry .whl (or point GPUHUB_GPU_WHEELS at them)"
        exit 2
      fi
      py=$venv/bin/python
      ;;
  esac
  local left
  left=$(missing "$py")
  if [ -n "$left" ]; then
    say "still missing after setup: $left"
    exit 2
  fi
}

run_checks() {
  local report log rc
  report=${GPUHUB_GPU_REPORT:-${OUT:-$(mktemp -d /tmp/gpuhub-gpu.XXXXXX)}/gpu-report.json}
  log=$(dirname "$report")/gpu-pytest.log
  mkdir -p "$(dirname "$report")"
  export GPUHUB_GPU_REPORT=$report PYTHONUNBUFFERED=1
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
  say "driver: $(nvidia-smi --query-gpu=driver_version,name --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not found')"
  set +e
  # --confcutdir: tests/conftest.py (the hub's fixtures) needs JupyterHub and Docker, these do not
  timeout -k 10 "$limit" "$py" -m pytest tests/gpu -m gpu -v -rs -p no:cacheprovider \
    --confcutdir=tests/gpu -o addopts="" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  if [ -f "$report" ]; then
    say "report: $report"
    cat "$report"
  else
    say "no report was written ($report)"
  fi
  [ "$rc" = 124 ] && say "the checks ran past ${limit} s and were stopped"
  return "$rc"
}

case ${1:-} in
  --prepare) prepare ;;
  --plan) plan ;;
  "") setup_python; run_checks ;;
  *) say "usage: tests/gpu/run-on-device.sh [--prepare|--plan]"; exit 2 ;;
esac
