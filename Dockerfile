# syntax=docker/dockerfile:1
# jina-embed server image. The model weights are NOT in the image (CC BY-NC 4.0, 1.1 GB): mount a
# model folder, or a Hugging Face cache, at /models (docs/deployment.md).
#
#   docker build -t jina-embed .
#   docker run --rm -p 8080:8080 -v "$PWD/jina-embeddings-v3:/models/jina-embeddings-v3:ro" jina-embed
#
# GPU variant (wgpu over Vulkan): the same file with the build argument FEATURES=gpu, which builds
# with `--features gpu` and adds the Vulkan loader and Mesa's drivers to the runtime stage. On
# NVIDIA, the container toolkit must hand in the driver's Vulkan ICD ("graphics" capability):
#   docker build --build-arg FEATURES=gpu -t jina-embed:gpu .
#   docker run --rm --gpus all -e NVIDIA_DRIVER_CAPABILITIES=compute,graphics,utility \
#       -e JINA_DEVICE=gpu -e JINA_GPU_ADAPTER=nvidia \
#       -p 8080:8080 -v "$PWD/jina-embeddings-v3:/models/jina-embeddings-v3:ro" jina-embed:gpu
# (JINA_GPU_ADAPTER makes a missing ICD an error instead of a run on lavapipe, which the Mesa
# drivers include.) Without FEATURES the image is the CPU one, unchanged.
#
# crates/cli/tests/packaging.rs checks this file and runs the commands it runs.

# ---- build stage: the release binary only
FROM rust:1.95-bookworm AS build
# Cargo features of jina-embed: empty (CPU only) or "gpu".
ARG FEATURES=""
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY assets ./assets
RUN cargo build --release --locked -p jina-embed ${FEATURES:+--features "$FEATURES"} && install -D -m 0755 target/release/jina-embed /out/jina-embed

# ---- runtime stage: a slim Debian, curl for the health check, a non-root user
FROM debian:bookworm-slim
ARG FEATURES=""
# FEATURES=gpu adds the Vulkan loader and Mesa's Vulkan drivers (AMD, Intel, lavapipe); NVIDIA's
# driver comes from the host through the container toolkit.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl ${FEATURES:+libvulkan1 mesa-vulkan-drivers} && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 --create-home --home-dir /home/jina jina
COPY --from=build /out/jina-embed /usr/local/bin/jina-embed
# The model folder (config.json, tokenizer.json, model.safetensors) is mounted here; a hub id in
# JINA_MODEL is looked up in the Hugging Face cache under /models/hub instead.
ENV JINA_MODEL=/models/jina-embeddings-v3 \
    HF_HUB_CACHE=/models/hub \
    JINA_HOST=0.0.0.0 \
    JINA_PORT=8080 \
    JINA_LOG_FORMAT=json
VOLUME ["/models"]
USER 10001:10001
EXPOSE 8080
# /health is 200 once the model is loaded and warmed up (503 before): the start period covers
# loading the full model.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 CMD ["curl", "-fsS", "http://127.0.0.1:8080/health"]
ENTRYPOINT ["jina-embed"]
CMD ["serve"]
