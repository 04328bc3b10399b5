#!/usr/bin/env bash
# Install the project and exactly its pinned dependencies into a new virtualenv.
#
#   deploy/install.sh --venv DIR [--extra gpu] [--python python3.11] [--no-cache]
#
# The one install step of both images (deploy/docker/*.Dockerfile) and of the test that runs it
# in a fresh virtualenv (tests/test_deploy_images.py), so what the images install is tested on a
# machine that cannot build them.
#
# --extra gpu adds implicit's CUDA 13 build (`implicit[gpu]`: rmm-cu13 and its libraries, about
# 14 MB of wheels). Installing it needs no GPU and no CUDA: the wheels carry their own code and
# load the CUDA libraries only when training starts on a GPU. So the test installs the very set
# the training image runs; the serving image installs the base set, a subset of it.
#
# After the install it checks that every installed distribution is pinned in requirements.lock at
# the installed version (a dependency that resolved freely fails the build, not a later run), runs
# `pip check`, and imports the installed project from outside the source tree (a module or
# template left out of the package fails here).
set -euo pipefail

usage() {
    echo "usage: $0 --venv DIR [--extra NAME]... [--python PYTHON] [--no-cache]" >&2
    exit 2
}

project_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=""
python=python3.11
extras=()
pip_cache=()
while [ $# -gt 0 ]; do
    case "$1" in
        --venv) venv=${2:?}; shift 2 ;;
        --extra) extras+=("${2:?}"); shift 2 ;;
        --python) python=${2:?}; shift 2 ;;
        # Images keep no pip cache; the test reuses the machine's, so a second run is quick.
        --no-cache) pip_cache=(--no-cache-dir); shift ;;
        *) usage ;;
    esac
done
[ -n "$venv" ] || usage

lock="$project_dir/requirements.lock"
target="$project_dir"
if [ ${#extras[@]} -gt 0 ]; then
    target="$project_dir[$(IFS=,; echo "${extras[*]}")]"
fi

"$python" -m venv "$venv"
pip=("$venv/bin/pip" --disable-pip-version-check --no-input "${pip_cache[@]}")
# Not editable: an image holds an installed copy, not a link to a source tree.
"${pip[@]}" install --quiet --constraint "$lock" "$target"

"$venv/bin/python" - "$lock" <<'PY'
import sys
from importlib import metadata

from packaging.utils import canonicalize_name

lock_path = sys.argv[1]
pinned = {}
for line in open(lock_path, encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if "==" in line:
        name, version = line.split("==", 1)
        pinned[canonicalize_name(name.split("[", 1)[0])] = version.strip()
# The installer itself and the project are not dependencies of the project.
exempt = {"pip", "setuptools", "wheel", "dailyrec"}
problems = []
for dist in metadata.distributions():
    name = canonicalize_name(dist.metadata["Name"])
    if name in exempt:
        continue
    if name not in pinned:
        problems.append(f"{name}=={dist.version} is installed but not pinned in requirements.lock")
    elif pinned[name] != dist.version:
        problems.append(f"{name}=={dist.version} is installed, requirements.lock pins {pinned[name]}")
if problems:
    print("install.sh: the installed set differs from requirements.lock:", *problems, sep="\n  ",
          file=sys.stderr)
    sys.exit(1)
PY
"${pip[@]}" check

# From / so that the installed copy is imported, not the source tree.
(cd / && "$venv/bin/python" -c '
import dailyrec.ops.runner, dailyrec.ops.notify, dailyrec.core.render, serving.app, stages.daily, implicit
serving.app.create_app()
')
echo "install.sh: installed $target into $venv"
