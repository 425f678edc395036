# Sourced by the scripts in this folder: installs what modelbatch needs on a fresh
# Debian/Ubuntu machine (when run as root) and sets up the environment. Idempotent.

set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

apt_updated=0
apt_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "modelbatch: missing Debian packages: $* (re-run as root, or: sudo apt-get install -y $*)" >&2
        return 1
    fi
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# A Vulkan adapter: lavapipe (Mesa's software Vulkan) is installed as a fallback so that a
# machine without a GPU driver still runs everything.
ensure_vulkan() {
    local have_lvp=0
    ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 && have_lvp=1
    if [ "$have_lvp" = 0 ] || ! ldconfig -p | grep -q 'libvulkan.so.1 '; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "modelbatch: installing mesa-vulkan-drivers libvulkan1 (software Vulkan adapter)" >&2
            apt_install mesa-vulkan-drivers libvulkan1
        else
            echo "modelbatch: no lavapipe found; relying on the system's Vulkan/Metal/DX12 driver" >&2
        fi
    fi
}

ensure_rust() {
    if ! command -v cargo >/dev/null; then
        echo "modelbatch: cargo not found; install Rust (https://rustup.rs)" >&2
        return 1
    fi
    if command -v rustup >/dev/null; then
        rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
        rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
    fi
}

# The wasm32 target (rustup), for the browser build and its clippy run.
ensure_wasm_target() {
    if command -v rustup >/dev/null; then
        rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
    fi
}

# Mesa warns on every adapter enumeration without a private runtime directory.
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -d "${XDG_RUNTIME_DIR}" ]; then
    export XDG_RUNTIME_DIR="${TMPDIR:-/tmp}/modelbatch-xdg-$(id -u)"
    mkdir -p "$XDG_RUNTIME_DIR"
    chmod 700 "$XDG_RUNTIME_DIR"
fi
