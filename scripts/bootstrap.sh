#!/bin/sh
# Installs what plinth's make targets need on a fresh Debian/Ubuntu machine, as root:
# apt packages, then uv in a private venv under .cache/tools, then the locked Python deps.
# Safe to re-run: every step is skipped when already done.
set -eu
cd "$(dirname "$0")/.."

APT_PACKAGES="make python3-venv python3-pip postgresql openssh-client curl ca-certificates git"

missing=""
for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "bootstrap: installing apt packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# Debian's postgresql package starts a cluster of its own; plinth's tests and `make dev` start
# throwaway servers instead, so the packaged one is left as the machine has it.

UV=.cache/tools/bin/uv
if [ ! -x "$UV" ]; then
    echo "bootstrap: installing uv into .cache/tools"
    python3 -m venv .cache/tools
    .cache/tools/bin/pip install -q --disable-pip-version-check uv
fi
# Bytecode compiled at install: where PYTHONDONTWRITEBYTECODE is set (as on the CI machine),
# Python never caches it, and every pyinfra run compiled pyinfra, paramiko and cryptography
# from source again (2.5 s of a 2.6 s start).
"$UV" sync --frozen --quiet --compile-bytecode
echo "bootstrap: ready"
