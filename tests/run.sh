#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need when it is missing, then runs
# the whole suite. Needs only the Rust toolchain to start; installs rsync, serf, minisign, systemd
# (for systemd-socket-activate), prometheus (for promtool), chromium, chromium-driver, openssl,
# pebble and curl from Debian and moto_server (a real S3-compatible server) from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v rsync >/dev/null || missing+=(rsync)
command -v serf >/dev/null || missing+=(serf)
# minisign signs the manifests of the signed-manifest tests.
command -v minisign >/dev/null || missing+=(minisign)
# systemd-socket-activate stands in for systemd in the socket-activation test.
command -v systemd-socket-activate >/dev/null || missing+=(systemd)
# promtool (the Prometheus project's own linter) checks the supervisor's /metrics and the agent's textfile.
command -v promtool >/dev/null || missing+=(prometheus)
# A real browser for the dashboard's test: headless chromium, driven through chromedriver.
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# openssl makes the test CA and the certificates of the HTTPS tests.
command -v openssl >/dev/null || missing+=(openssl)
# The ACME tests' CA (Let's Encrypt's Pebble, with pebble-challtestsrv for its DNS).
command -v pebble >/dev/null || missing+=(pebble)
# curl is the DNS-01 test's hook: it sets TXT records over pebble-challtestsrv's API.
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v moto_server >/dev/null || ! moto_server --help >/dev/null 2>&1; then
  echo "tests/run.sh: installing moto[server] from PyPI" >&2
  python3 -m pip install --quiet 'moto[server]'
  # pyenv (as on the build machines) only sees a new console script after a rehash.
  if command -v pyenv >/dev/null; then pyenv rehash; fi
  hash -r
fi

cargo test --locked -- --test-threads "${CUTOVER_TEST_THREADS:-4}"
