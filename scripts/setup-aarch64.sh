#!/usr/bin/env bash
# Installs what building and running the engine for aarch64 on an x86 Debian machine needs
# (docs: "Testing aarch64 code on an x86 machine"): Debian's Rust (rustc-web/cargo-web) with its
# arm64 standard library, the aarch64 cross C/C++ compilers and libc, and qemu-user to run the
# binaries. Debian's cargo and rustc must be used together: the rustup toolchain cannot load that
# standard library. libc6:arm64 is listed explicitly: the qemu runner (scripts/qemu-aarch64-runner.sh)
# runs binaries against it, loader and libc from that one package (see there why not the cross
# sysroot's). Idempotent: does nothing when everything is already installed. Needs root.
set -euo pipefail
packages=(rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu g++-aarch64-linux-gnu
    libc6-dev-arm64-cross libc6:arm64 qemu-user)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        dpkg --add-architecture arm64
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
echo "aarch64 toolchain ready: $(/usr/bin/rustc --version), $(aarch64-linux-gnu-gcc --version | head -1)," \
    "$(qemu-aarch64 --version | head -1)"
