#!/usr/bin/env bash
# Installs Mesa's lavapipe (software Vulkan on the CPU) and the Vulkan loader, so that the
# engine's `gpu` feature can be tested on a machine without a GPU (scripts/test-gpu.sh).
#
# Prefers Debian bookworm-backports' Mesa (25.x: a current lavapipe, Vulkan 1.4, shader-f16);
# adds that source under /etc/apt/sources.list.d/ when missing. Falls back to bookworm's own
# Mesa (22.3) with a warning. Idempotent; needs root (apt-get).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-lavapipe.sh: needs root (apt-get install)" >&2
    exit 1
fi

. /etc/os-release
codename="${VERSION_CODENAME:-}"
export DEBIAN_FRONTEND=noninteractive

# Already installed, with the ICD in place: nothing to do (unless JINA_LAVAPIPE_REINSTALL=1).
icd_present() {
    ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1
}
if icd_present && dpkg -s mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1 \
    && [ "${JINA_LAVAPIPE_REINSTALL:-0}" != 1 ]; then
    echo "lavapipe already installed: mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers)"
    exit 0
fi

backports=""
if [ "$codename" = bookworm ]; then
    backports="bookworm-backports"
    list=/etc/apt/sources.list.d/bookworm-backports.sources
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "adding $list"
        cat >"$list" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
fi

apt-get update -q

packages=(mesa-vulkan-drivers libvulkan1 vulkan-tools)
installed=""
if [ -n "$backports" ]; then
    candidate=$(apt-cache policy -t "$backports" mesa-vulkan-drivers 2>/dev/null \
        | awk '/Candidate:/ {print $2}')
    if [ -n "$candidate" ] && [ "$candidate" != "(none)" ] \
        && apt-get install -y -q -t "$backports" "${packages[@]}"; then
        installed="$backports"
    else
        echo "WARNING: Mesa from $backports could not be installed" >&2
    fi
fi
if [ -z "$installed" ]; then
    echo "WARNING: falling back to the distribution's own Mesa (older lavapipe: no shader-f16" \
        "on 22.x; the f32 tests still run)" >&2
    apt-get install -y -q "${packages[@]}"
    installed="$codename"
fi

if ! icd_present; then
    echo "setup-lavapipe.sh: mesa-vulkan-drivers installed but no lvp_icd*.json in" \
        "/usr/share/vulkan/icd.d/" >&2
    exit 1
fi
echo "lavapipe installed from $installed: mesa-vulkan-drivers" \
    "$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers)"
