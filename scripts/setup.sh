#!/usr/bin/env bash
# Installs what cleancut needs on a Debian machine, then creates .venv with the project in it.
# Idempotent: installs only what is missing, so a second run takes a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(restic xfsprogs btrfs-progs e2fsprogs sqlite3 util-linux python3-venv acl libcap2-bin
          openssh-server openssh-client iproute2
          postgresql-15 postgresql-client-15 mariadb-server mariadb-client mariadb-backup
          cron prometheus prometheus-pushgateway systemd-container)
PY=${PYTHON:-python3}

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing system packages: ${missing[*]}" >&2
        echo "setup: run 'sudo apt-get install ${missing[*]}' (or run make as root)" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    # openssh-server, postgresql and mariadb-server would start system services as they
    # install (sshd on port 22, the databases on theirs): forbid service
    # starts for the install (exit 101), unless the machine has a policy-rc.d of its own.
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [[ ! -e $policy && ! -L $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
        trap 'rm -f "$policy"' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    if [[ -n $made_policy ]]; then
        rm -f "$policy"
        trap - EXIT
    fi
fi

if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.cleancut-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    echo "setup: installing cleancut into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch "$stamp"
fi
