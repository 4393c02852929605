#!/usr/bin/env bash
# Cargo's runner for aarch64 binaries (set by scripts/aarch64-env.sh): runs one under qemu-aarch64
# with the emulated CPU model named by QEMU_CPU, read at each run (default `max`: every feature;
# `cortex-a53`: NEON only; `neoverse-n1`: + dotprod), so `QEMU_CPU=cortex-a53 cargo test ...` works.
exec qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu "${QEMU_CPU:-max}" "$@"
