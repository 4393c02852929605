#!/usr/bin/env bash
# Cargo's runner for aarch64 binaries (set by scripts/aarch64-env.sh): runs one under qemu-aarch64
# with the emulated CPU model named by QEMU_CPU, read at each run (default `max`: every feature;
# `cortex-a53`: NEON only; `neoverse-n1`: + dotprod), so `QEMU_CPU=cortex-a53 cargo test ...` works.
#
# No `-L /usr/aarch64-linux-gnu`: with it, qemu takes the dynamic loader from the cross sysroot
# (libc6-arm64-cross, glibc 2.36-8cross1) while that loader still finds libc.so.6 in
# /lib/aarch64-linux-gnu first (libc6:arm64, 2.36-9+deb12u*, installed with Debian's arm64 Rust
# standard library). The two disagree on the layout of their shared private data, and the first
# pthread_create loops for ever in glibc's stack-cache walk (a 3-line Rust program that spawns a
# thread hangs; the engine hung at its first rayon call). Without -L both come from libc6:arm64.
exec qemu-aarch64 -cpu "${QEMU_CPU:-max}" "$@"
