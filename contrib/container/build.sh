#!/bin/sh
# Build the Portunus images portunus-server, portunus-edge and
# portunus-standalone from this checkout (or a given wheel).
#
#   contrib/container/build.sh [--engine CMD] [--base IMAGE] [--wheel FILE]
#                              [--wheelhouse DIR] [--tag TAG] [--prefix P]
#                              [--targets "server edge standalone"] [-- BUILD-ARGS...]
#
#   --engine CMD      docker or podman, with options (default: podman if
#                     found, else docker), e.g. "podman --cgroup-manager=cgroupfs"
#   --base IMAGE      Debian bookworm base (default docker.io/library/debian:bookworm-slim)
#   --wheel FILE      the project wheel (default: built here with pip wheel --no-deps)
#   --wheelhouse DIR  install dependencies from the wheels in DIR only (no index)
#   --tag TAG         image tag (default: the wheel's version); "latest" is tagged too
#   --prefix P        image name prefix (default: none, e.g. "registry.example.net/ops/")
#   --targets LIST    which images (default: all three)
#   -- BUILD-ARGS     passed to "<engine> build" as they are
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
engine=
base=
wheel=
wheelhouse=
tag=
prefix=
targets="server edge standalone"
python=${PYTHON:-python3}

die() { echo "build.sh: $*" >&2; exit 2; }
need() { [ $# -ge 2 ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
  case $1 in
    --engine) need "$@"; engine=$2; shift 2 ;;
    --base) need "$@"; base=$2; shift 2 ;;
    --wheel) need "$@"; wheel=$2; shift 2 ;;
    --wheelhouse) need "$@"; wheelhouse=$2; shift 2 ;;
    --tag) need "$@"; tag=$2; shift 2 ;;
    --prefix) need "$@"; prefix=$2; shift 2 ;;
    --targets) need "$@"; targets=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

if [ -z "$engine" ]; then
  if command -v podman >/dev/null 2>&1; then engine=podman
  elif command -v docker >/dev/null 2>&1; then engine=docker
  else die "neither podman nor docker found; pass --engine"
  fi
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT INT TERM
mkdir "$ctx/dist" "$ctx/deps"

if [ -z "$wheel" ]; then
  "$python" -m pip wheel --quiet --no-deps --wheel-dir "$ctx/dist" "$root"
else
  [ -f "$wheel" ] || die "--wheel $wheel: no such file"
  cp "$wheel" "$ctx/dist/"
fi
set -- "$ctx"/dist/portunus-*.whl "$@"
[ -f "$1" ] || die "no portunus wheel in $ctx/dist"
built=$1
shift

# The dependency list, straight from the wheel's metadata.
"$python" - "$built" >"$ctx/requirements.txt" <<'PY'
import sys, zipfile
from email.parser import Parser
with zipfile.ZipFile(sys.argv[1]) as whl:
    name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(whl.read(name).decode())
for req in meta.get_all("Requires-Dist") or []:
    if "extra ==" not in req:
        print(req)
PY

index_arg=
if [ -n "$wheelhouse" ]; then
  [ -d "$wheelhouse" ] || die "--wheelhouse $wheelhouse: no such directory"
  cp "$wheelhouse"/*.whl "$ctx/deps/"
  index_arg="--build-arg=PIP_NO_INDEX=1"
fi

if [ -z "$tag" ]; then
  tag=$(basename "$built" | cut -d- -f2)
fi
base_arg=
[ -z "$base" ] || base_arg="--build-arg=BASE=$base"

# HEALTHCHECK is a Docker-format field: podman drops it from OCI images.
format_arg=
case $engine in podman*) format_arg="--format=docker" ;; esac

cp "$here/Containerfile" "$ctx/Containerfile"
for target in $targets; do
  case $target in server|edge|standalone) ;; *) die "unknown target $target" ;; esac
  image="${prefix}portunus-$target"
  echo "build.sh: building $image:$tag" >&2
  # shellcheck disable=SC2086 # the engine and the optional arguments split on purpose
  $engine build $format_arg $base_arg $index_arg --target "$target" \
    --tag "$image:$tag" --tag "$image:latest" --file "$ctx/Containerfile" "$@" "$ctx"
done
