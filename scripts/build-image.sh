#!/usr/bin/env bash
# Build the Dockerfile with podman, FROM a base image made of Debian bookworm's own packages
# (debootstrap: Python 3.11, venv, CA certificates), so a broken Dockerfile fails CI without a
# Docker engine or an image registry. Then run `tacho --help` in the image when this machine can
# run containers (crun without cgroups); say so, and pass, when it cannot.
#
#   scripts/build-image.sh            # IMAGE=localhost/tachograph:ci by default
#
# The base rootfs is cached as .cache/image/<suite>-<hash>.tar (a rerun imports it, or finds the
# image already in podman's store); podman's layer cache keeps reruns of an unchanged build fast.
# Environment: IMAGE (tag to build), DEBIAN_MIRROR (default: this machine's apt source for the
# suite, else debootstrap's default), PODMAN_STORAGE_DRIVER (default: podman's), SMOKE=0 (skip
# the run), BUILD_CA (a CA bundle for pip in the build, default this machine's when it exists:
# for builds behind a TLS-inspecting proxy; passed as a build secret, never a layer).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SUITE=bookworm
PACKAGES="python3,python3-venv,ca-certificates"
IMAGE="${IMAGE:-localhost/tachograph:ci}"
CACHE=.cache/image
mkdir -p "$CACHE"

for tool in podman debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build-image: $tool is missing (apt-get install podman debootstrap, or scripts/ci-prereqs.sh)" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "build-image: debootstrap needs root" >&2; exit 2; }

PODMAN=(podman)
[ -n "${PODMAN_STORAGE_DRIVER:-}" ] && PODMAN+=(--storage-driver "$PODMAN_STORAGE_DRIVER")

key=$(printf '%s %s %s' "$SUITE" "$PACKAGES" "$(uname -m)" | sha256sum | cut -c1-12)
BASE="localhost/tacho-base:$SUITE-$key"
tarball="$CACHE/$SUITE-$key.tar"

if ! "${PODMAN[@]}" image exists "$BASE"; then
  if [ ! -s "$tarball" ]; then
    mirror="${DEBIAN_MIRROR:-}"
    if [ -z "$mirror" ] && command -v apt-get >/dev/null 2>&1; then
      mirror=$(apt-get indextargets --format '$(REPO_URI) $(CODENAME)' 2>/dev/null \
        | awk -v s="$SUITE" '$2 == s && $1 !~ /security/ {print $1; exit}')
    fi
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    echo "build-image: debootstrap $SUITE ($PACKAGES) from ${mirror:-the default mirror of debootstrap}"
    start=$SECONDS
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" ${mirror:+"$mirror"} \
      > "$CACHE/debootstrap.log" 2>&1 || { tail -30 "$CACHE/debootstrap.log" >&2; exit 1; }
    # an image needs no apt lists or package caches; the build stage fetches its own
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
    trap - EXIT
    echo "build-image: base rootfs in $((SECONDS - start))s: $tarball ($(du -h "$tarball" | cut -f1))"
  fi
  "${PODMAN[@]}" import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
    "$tarball" "$BASE" >/dev/null
  echo "build-image: imported $BASE"
fi

secret=()
ca="${BUILD_CA-/etc/ssl/certs/ca-certificates.crt}"
[ -n "$ca" ] && [ -s "$ca" ] && secret=(--secret "id=ca,src=$ca")

echo "build-image: podman build -t $IMAGE --build-arg BASE=$BASE"
start=$SECONDS
"${PODMAN[@]}" build --pull=never --network=host --layers --isolation="${BUILD_ISOLATION:-chroot}" \
  --build-arg "BASE=$BASE" "${secret[@]}" -t "$IMAGE" -f Dockerfile .
echo "build-image: built $IMAGE in $((SECONDS - start))s"

# Smoke test: run the image. crun (podman's default here) fails on hosts with cgroups in hybrid
# mode, even with --cgroups=disabled; runc runs it, given explicit ulimits (setting the host's own
# RLIMIT_NOFILE/NPROC is refused without CAP_SYS_RESOURCE). SMOKE=0 skips this, SMOKE=require
# fails the script when no runtime can run the image.
[ "${SMOKE:-1}" = "0" ] && exit 0
run_opts=(--rm --network=host --ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
for runtime in "${SMOKE_RUNTIME:-}" runc crun; do
  [ -n "$runtime" ] && command -v "$runtime" >/dev/null 2>&1 || continue
  if out=$("${PODMAN[@]}" --runtime "$runtime" run "${run_opts[@]}" "$IMAGE" --help 2>&1); then
    grep -q "Usage: tacho" <<<"$out" || { echo "build-image: tacho --help printed no usage:" >&2; echo "$out" >&2; exit 1; }
    user=$("${PODMAN[@]}" --runtime "$runtime" run "${run_opts[@]}" --entrypoint id "$IMAGE" -u)
    [ "$user" != "0" ] || { echo "build-image: the image runs as root" >&2; exit 1; }
    echo "build-image: smoke test passed with $runtime: tacho --help runs, as uid $user"
    exit 0
  fi
  echo "build-image: $runtime cannot run containers here: $(tail -1 <<<"$out")"
done
if [ "${SMOKE:-1}" = "require" ]; then
  echo "build-image: no OCI runtime could run the image (install runc)" >&2; exit 1
fi
echo "build-image: smoke test skipped: no OCI runtime could run containers on this machine"
