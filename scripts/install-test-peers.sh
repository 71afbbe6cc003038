#!/usr/bin/env bash
# Peers the tests start on loopback that do not come with the machine, installed when
# missing (idempotent: nothing happens when they are there):
#   aiosmtpd  (PyPI) the real SMTP server tests/mail.rs sends to (tests/support/smtp_sink.py)
set -euo pipefail
if ! python3 -c "import aiosmtpd" >/dev/null 2>&1; then
  echo "install-test-peers: installing aiosmtpd from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check aiosmtpd 2>&1 | grep -v "Running pip as the 'root' user" >&2 || true
  python3 -c "import aiosmtpd" || { echo "install-test-peers: aiosmtpd did not install" >&2; exit 1; }
fi
