#!/usr/bin/env bash
# Installs a release build of nva and the systemd units of the agent and the
# failover daemon.
#   cargo xtask build --release && sudo scripts/install.sh
# An existing /etc/nva/nva.toml is left untouched.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${CARGO_TARGET_DIR:-$root/target}/release/nva"

if [[ $(id -u) -ne 0 ]]; then
    echo "install.sh: must run as root" >&2
    exit 1
fi
if [[ ! -x $bin ]]; then
    echo "install.sh: $bin not found; run 'cargo xtask build --release' first" >&2
    exit 1
fi

install -D -m 0755 "$bin" /usr/local/bin/nva
install -D -m 0644 "$root/scripts/nva-agent.service" /etc/systemd/system/nva-agent.service
install -D -m 0644 "$root/scripts/nva-failover.service" /etc/systemd/system/nva-failover.service
if [[ ! -e /etc/nva/failover.toml ]]; then
    install -D -m 0640 "$root/scripts/failover-example.toml" /etc/nva/failover.toml
    echo "installed example failover config /etc/nva/failover.toml (for the daemon hosts)"
fi
if [[ ! -e /etc/nva/nva.toml ]]; then
    install -D -m 0640 "$root/scripts/example.toml" /etc/nva/nva.toml
    echo "installed example config /etc/nva/nva.toml: edit it, then 'nva check --config /etc/nva/nva.toml'"
else
    echo "kept existing /etc/nva/nva.toml"
fi
if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
fi
echo "installed /usr/local/bin/nva, nva-agent.service and nva-failover.service"
echo "on an NVA: systemctl enable --now nva-agent; on a failover host: systemctl enable --now nva-failover"
