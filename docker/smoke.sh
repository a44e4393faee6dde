#!/usr/bin/env bash
# Smoke test of the image, for a machine with Docker: build it, run it, send the original service's
# curl example, check that a 512x512 PNG comes back, then stop it and check that it drained cleanly.
#
#   docker/smoke.sh                                    CPU image, tiny model: offline, a few minutes
#   TARGET=gpu docker/smoke.sh                         GPU image: build-engines into a volume, then serve
#   TARGET=gpu MODEL=stabilityai/sdxl-turbo docker/smoke.sh   the real model (downloads about 7 GB once)
#
# Settings: TARGET (cpu|gpu), MODEL, IMAGE (tag to build), PORT (host port), READY_TIMEOUT (s),
# MODELS_VOLUME (Hugging Face cache volume, kept between runs), EXPECT_ENGINE (X-Engine prefix, e.g. tensorrt).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${TARGET:-cpu}
MODEL=${MODEL:-tiny}
IMAGE=${IMAGE:-sdxl-turbo-service:smoke-$TARGET}
PORT=${PORT:-5055}
READY_TIMEOUT=${READY_TIMEOUT:-900}
MODELS_VOLUME=${MODELS_VOLUME:-sdxl-smoke-models}
EXPECT_ENGINE=${EXPECT_ENGINE:-}
NAME=sdxl-smoke-$$
ENGINES_VOLUME=sdxl-smoke-engines-$$
OUT=$(mktemp -d)
URL=http://127.0.0.1:$PORT

cleanup() {
    docker rm -f "$NAME" >/dev/null 2>&1 || true
    docker volume rm -f "$ENGINES_VOLUME" >/dev/null 2>&1 || true
    rm -rf "$OUT"
}
trap cleanup EXIT

fail() {
    echo "smoke: FAIL: $*" >&2
    docker logs --tail 60 "$NAME" >&2 2>/dev/null || true
    exit 1
}

step() { echo "smoke: $*"; }

gpu=()
if [ "$TARGET" = gpu ]; then
    gpu=(--gpus all)
fi
volumes=(-v "$MODELS_VOLUME:/data/huggingface" -v "$ENGINES_VOLUME:/data/engines")

step "building $IMAGE (--target $TARGET)"
docker build --target "$TARGET" -t "$IMAGE" .

if [ "$TARGET" = gpu ]; then
    step "building engines for $MODEL on this GPU"
    docker run --rm "${gpu[@]}" -e SDXL_MODEL="$MODEL" "${volumes[@]}" "$IMAGE" build-engines
fi

step "starting the service ($MODEL) on $URL"
docker run -d --name "$NAME" ${gpu[@]+"${gpu[@]}"} -p "127.0.0.1:$PORT:5000" -e SDXL_MODEL="$MODEL" \
    "${volumes[@]}" --health-interval 2s --health-start-period 5s "$IMAGE" serve >/dev/null

deadline=$((SECONDS + READY_TIMEOUT))
until curl -fsS -o /dev/null "$URL/readyz" 2>/dev/null; do
    [ "$(docker inspect -f '{{.State.Running}}' "$NAME")" = true ] || fail "the container stopped before it was ready"
    [ "$SECONDS" -lt "$deadline" ] || fail "not ready after ${READY_TIMEOUT}s"
    sleep 2
done
step "ready: $(curl -fsS "$URL/readyz")"

[ "$(docker exec "$NAME" id -u)" = 10001 ] || fail "the service does not run as uid 10001"

# The original service's example, as its README sent it.
example() {
    curl -sS -X POST -H "Content-Type: application/json" \
        -d '{"prompt":"A cinematic shot a 3 maneki neko in South America."}' \
        -D "$OUT/headers" -o "$OUT/result.png" -w '%{http_code} %{content_type}' \
        "$URL/generate-image"
}
header() { grep -i "^$1:" "$OUT/headers" | cut -d' ' -f2- | tr -d '\r'; }

answer=$(example)
[ "$answer" = "200 image/png" ] || fail "POST /generate-image answered $answer: $(head -c 500 "$OUT/result.png")"
# Decode it with Pillow inside the image: the host needs no Python.
decoded=$(docker exec -i "$NAME" python -c '
import io, sys
from PIL import Image
image = Image.open(io.BytesIO(sys.stdin.buffer.read()))
image.load()
print(image.format, "%dx%d" % image.size)' <"$OUT/result.png")
[ "$decoded" = "PNG 512x512" ] || fail "the image is $decoded, not a 512x512 PNG"
engine=$(header x-engine)
step "PNG 512x512 from $engine (X-Cache: $(header x-cache), X-Seed: $(header x-seed))"
if [ -n "$EXPECT_ENGINE" ]; then
    case $engine in "$EXPECT_ENGINE"*) ;; *) fail "X-Engine is $engine, expected $EXPECT_ENGINE*" ;; esac
fi

answer=$(example)
if [ "$answer" != "200 image/png" ] || [ "$(header x-cache)" != HIT ]; then
    fail "the same request again was not a cache hit ($answer, X-Cache: $(header x-cache))"
fi

health=unknown
for _ in $(seq 30); do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$NAME")
    [ "$health" = healthy ] && break
    sleep 1
done
[ "$health" = healthy ] || fail "the image's HEALTHCHECK says $health"

step "stopping (SIGTERM, drain)"
docker stop -t 45 "$NAME" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || fail "the service exited with $code after SIGTERM"
step "PASS ($TARGET, $MODEL)"
