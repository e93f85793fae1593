#!/usr/bin/env bash
# Builds the platform's image (ai-platform:VERSION) and the S3-compatible store's test image, with docker where a
# Docker engine answers, else podman (installed with apt when missing, and set up to run on this kind of host).
#
#   deploy/image.sh            # what `make image` runs
#   deploy/image.sh --check    # only says whether a container engine can run here (exit 0) or why not (exit 3)
#
# Without a reachable image registry the base is made from Debian's packages (mmdebstrap + import), and PyTorch's
# CPU wheel comes from wherever this host's pip finds it (its find-links and local indexes are mounted read-only
# into the build). Environment: ENGINE (docker|podman), BASE_IMAGE (skips the base), AIP_S3_IMAGE.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE="ai-platform:${VERSION}"
LOCAL_BASE="localhost/aip-base:bookworm"
S3_IMAGE="${AIP_S3_IMAGE:-localhost/aip-s3:moto}"
say() { echo "image: $*" >&2; }

engine_works() {  # a container starts (not only the client answers)
    case "$1" in
        docker) docker info >/dev/null 2>&1 ;;
        podman) podman info >/dev/null 2>&1 ;;
    esac
}

setup_podman() {
    if ! command -v podman >/dev/null; then
        command -v apt-get >/dev/null || { say "neither a Docker engine nor podman here; install podman"; return 3; }
        say "installing podman (apt)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap \
            >/dev/null || { say "apt could not install podman"; return 3; }
    fi
    engine_works podman || { say "podman is installed but does not run: $(podman info 2>&1 | tail -1)"; return 3; }
    # Some hosts refuse podman's default runtime (crun, on a cgroup v1 layout) or its default ulimits (above the
    # host's hard limit): a drop-in makes runc and ulimits the host allows the defaults, so the compose file and
    # plain `podman run` work without flags.
    local conf_dir="/etc/containers/containers.conf.d"
    [ "$(id -u)" = 0 ] || conf_dir="${XDG_CONFIG_HOME:-$HOME/.config}/containers/containers.conf.d"
    if [ ! -f "$conf_dir/50-ai-platform.conf" ]; then
        local nofile nproc runtime=""
        nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
        [ "$nofile" = unlimited ] && nofile=1048576
        [ "$nproc" = unlimited ] && nproc=65536
        [ "$nofile" -gt 20000 ] && nofile=20000
        [ "$nproc" -gt 4096 ] && nproc=4096
        command -v runc >/dev/null && runtime='runtime = "runc"'
        mkdir -p "$conf_dir"
        printf '# written by ai-platform deploy/image.sh: a runtime and ulimits this host allows\n[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n[engine]\n%s\n' \
            "$nofile" "$nofile" "$nproc" "$nproc" "$runtime" > "$conf_dir/50-ai-platform.conf"
        say "wrote $conf_dir/50-ai-platform.conf (runc, nofile=$nofile, nproc=$nproc)"
    fi
}

pick_engine() {
    if [ -n "${ENGINE:-}" ]; then echo "$ENGINE"; return; fi
    if command -v docker >/dev/null && engine_works docker; then echo docker; return; fi
    echo podman
}

ENGINE=$(pick_engine)
if [ "$ENGINE" = podman ]; then setup_podman || exit 3; else engine_works docker || { say "docker does not run"; exit 3; }; fi
# A container must start, not only the engine answer.
if [ "${1:-}" = "--check" ]; then echo "$ENGINE"; exit 0; fi

registry_reachable() { timeout 60 "$ENGINE" pull -q docker.io/library/python:3.11-slim >/dev/null 2>&1; }

if [ -z "${BASE_IMAGE:-}" ]; then
    if "$ENGINE" image exists python:3.11-slim 2>/dev/null || registry_reachable; then
        BASE_IMAGE=python:3.11-slim
    else
        BASE_IMAGE=$LOCAL_BASE
        if ! "$ENGINE" image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
            say "no image registry reachable: making $LOCAL_BASE from Debian bookworm's packages"
            command -v mmdebstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
            tar=$(mktemp --suffix=.tar)
            mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$tar"
            "$ENGINE" import --change 'CMD ["/bin/bash"]' "$tar" "$LOCAL_BASE" >/dev/null
            rm -f "$tar"
        fi
    fi
fi

# The host pip's local wheels (find-links, file:// indexes): mounted read-only at the same paths, passed on.
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
mounts=()
PY=$(command -v python3)
find_links=$("$PY" -m pip config get global.find-links 2>/dev/null || echo "${PIP_FIND_LINKS:-}")
extra_index=$("$PY" -m pip config get global.extra-index-url 2>/dev/null || echo "${PIP_EXTRA_INDEX_URL:-}")
local_paths=()
for link in $find_links; do [ -d "$link" ] && local_paths+=("$link"); done
extra_urls=()
for url in $extra_index; do
    path=${url#file://}
    # a file:// index links its files beside simple/: mount the folder that holds both
    if [ "$path" != "$url" ] && [ -d "$path" ]; then extra_urls+=("$url"); local_paths+=("$(dirname "$path")"); fi
done
# A host whose traffic passes a TLS-inspecting proxy trusts it through pip's cert bundle: the build must too.
cert=$("$PY" -m pip config get global.cert 2>/dev/null || echo "${PIP_CERT:-}")
if [ "$ENGINE" = podman ]; then
    for path in "${local_paths[@]}"; do mounts+=(--volume "$path:$path:ro"); done
    [ -n "$find_links" ] && [ ${#local_paths[@]} -gt 0 ] && build_args+=(--build-arg "PIP_FIND_LINKS=$find_links")
    [ ${#extra_urls[@]} -gt 0 ] && build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=${extra_urls[*]}")
    if [ -n "$cert" ] && [ -f "$cert" ]; then
        mounts+=(--volume "$cert:/etc/aip-build/ca-bundle.crt:ro")
        build_args+=(--build-arg "PIP_CERT=/etc/aip-build/ca-bundle.crt")
    fi
fi
format=()
[ "$ENGINE" = podman ] && format=(--format docker)  # keeps HEALTHCHECK (the OCI format has none)

[ -f web/vendor/uPlot.iife.min.js ] || say "warning: web/vendor/ is empty (run make install): the page will lack its charts"
started=$(date +%s)
say "building $IMAGE from $BASE_IMAGE with $ENGINE"
"$ENGINE" build "${format[@]}" --network host "${mounts[@]}" "${build_args[@]}" -f deploy/Dockerfile \
    -t "$IMAGE" .
say "built $IMAGE in $(( $(date +%s) - started ))s: $("$ENGINE" image inspect -f '{{.Size}}' "$IMAGE" | numfmt --to=iec)"

if [ -z "${AIP_S3_IMAGE:-}" ]; then  # the tests' S3-compatible store (users set AIP_S3_IMAGE to a MinIO release)
    "$ENGINE" build "${format[@]}" --network host "${mounts[@]}" "${build_args[@]}" -f deploy/s3.Dockerfile \
        -t "$S3_IMAGE" deploy >/dev/null
    say "built $S3_IMAGE"
fi
