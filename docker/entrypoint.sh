#!/bin/sh
# The image's jobs: `serve` (the default) and `build-engines`, plus `healthcheck` for HEALTHCHECK.
# Both jobs read the same SDXL_* variables, so the engines a build writes are the ones serve looks
# for. Each job replaces this shell (exec), so SIGTERM reaches Python and it drains cleanly.
set -eu

usage() {
    cat <<'EOF'
usage: entrypoint.sh [JOB] [ARGS...]

  serve [FLAGS]          python -m service: serve images (python -m service --help lists the
                         flags; each has an SDXL_* variable). The default job.
  build-engines [FLAGS]  python -m build_engines: export ONNX and build TensorRT engines for this
                         GPU. --model and --out default to $SDXL_MODEL and $SDXL_ENGINE_DIR.
  healthcheck            exit 0 when GET /healthz answers 200 on $SDXL_PORT (default 5000)
  --FLAG ...             flags alone: serve with them
  COMMAND [ARGS...]      anything else runs as a command (e.g. bash)
EOF
}

# has_flag FLAG ARGS...: true when ARGS hold FLAG or FLAG=VALUE.
has_flag() {
    flag=$1
    shift
    for arg in "$@"; do
        case $arg in
            "$flag" | "$flag"=*) return 0 ;;
        esac
    done
    return 1
}

# Where the NVIDIA runtime gave the container a GPU (nvidia-smi is mounted with it): one line and a
# non-zero exit when the host driver is too old for the image's CUDA 13 (580+), instead of torch
# later saying only that it sees no GPU.
check_driver() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        python -m engines.core.driver
    fi
}

job=${1:-serve}
if [ $# -gt 0 ]; then
    shift
fi

case $job in
    serve)
        check_driver
        exec python -m service "$@"
        ;;
    build-engines)
        # Explicit flags win; otherwise build for the model and directory serve will use.
        if [ -n "${SDXL_ENGINE_DIR:-}" ] && ! has_flag --out "$@"; then
            set -- --out "$SDXL_ENGINE_DIR" "$@"
        fi
        if [ -n "${SDXL_MODEL:-}" ] && ! has_flag --model "$@"; then
            set -- --model "$SDXL_MODEL" "$@"
        fi
        if [ -n "${SDXL_REVISION:-}" ] && ! has_flag --revision "$@"; then
            set -- --revision "$SDXL_REVISION" "$@"
        fi
        check_driver
        exec python -m build_engines "$@"
        ;;
    healthcheck)
        # A wildcard listen address is reached through loopback; a specific one directly.
        exec python -c '
import os, sys, urllib.request
host = os.environ.get("SDXL_HOST") or "127.0.0.1"
host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
port = os.environ.get("SDXL_PORT") or "5000"
url = f"http://{host}:{port}/healthz"
try:
    with urllib.request.urlopen(url, timeout=5) as reply:
        sys.exit(0 if reply.status == 200 else f"healthcheck: {url} answered {reply.status}")
except OSError as exc:
    sys.exit(f"healthcheck: {url}: {exc}")
'
        ;;
    help | -h)
        usage
        ;;
    -*)
        check_driver
        exec python -m service "$job" "$@"
        ;;
    *)
        exec "$job" "$@"
        ;;
esac
