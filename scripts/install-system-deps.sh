#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, only those missing: redis-server (spawned by the Redis
# tests on a free port), chromium (the browser test drives it with Playwright), nginx and caddy (tests/deploy/
# starts them from deploy/ on free ports). Run as root, as CI does.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# redis-cli creates the test clusters (redis-cli --cluster create); Debian ships it in redis-tools.
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v caddy >/dev/null 2>&1 || missing+=(caddy)
for extra in "$@"; do
  pkg=${extra%%:*}; cmd=${extra#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -e "$cmd" ] || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-system-deps: missing ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# A redis-server package starts a system service on 6379 where systemd runs; the tests never use it.
# So do nginx and caddy (on 80, or 80/443): the tests start their own from deploy/ on free loopback ports.
