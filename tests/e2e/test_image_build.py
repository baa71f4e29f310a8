"""The Dockerfile builds: podman builds it FROM a base made of Debian bookworm's own packages
(debootstrap, Python 3.11), and the image runs `tacho --help` as a user other than root
(scripts/build-image.sh; the base rootfs is cached under .cache/image, so reruns take seconds)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.cli_support import ROOT

pytestmark = pytest.mark.image


def test_the_dockerfile_builds_from_debian_packages_and_the_image_runs() -> None:
    missing = [t for t in ("podman", "debootstrap", "runc") if shutil.which(t) is None]
    assert not missing, f"{', '.join(missing)} missing: run scripts/ci-prereqs.sh"
    env = {**os.environ, "SMOKE": "require", "IMAGE": "localhost/tachograph:test"}
    out = subprocess.run(["bash", "scripts/build-image.sh"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=1500)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    assert "built localhost/tachograph:test" in log
    assert "smoke test passed" in log and "as uid 10001" in log, log[-3000:]
    # the image is what the compose file builds: the tacho entry point, a non-root user
    inspect = subprocess.run(["podman", "image", "inspect", "--format",
                              "{{json .Config.Entrypoint}} {{.Config.User}}", "localhost/tachograph:test"],
                             capture_output=True, text=True, timeout=60)
    assert inspect.stdout.split() == ['["tacho"]', "10001:10001"], inspect.stdout + inspect.stderr
