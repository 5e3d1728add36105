#!/bin/sh
# Installs the system packages crispy and its tests use, and prepares the node.
# Idempotent: a second run installs nothing and changes nothing.
set -eu

PACKAGES="runc crun runsc containernetworking-plugins iptables iproute2 busybox-static docker-registry python3-venv"
# The benchmarks measure containerd beside crispy on the same machine.
if [ "${CRISPY_BENCH:-}" = 1 ]; then
    PACKAGES="$PACKAGES containerd"
fi

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # docker-registry's postinst starts a service where systemd runs; policy-rc.d keeps it off.
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# Debian's docker-registry package enables a registry on :5000 where an init system
# runs it; the tests start their own on a free loopback port and need no system one.

# crun 1.8 refuses to run while the cgroup v2 hierarchy of a hybrid setup holds a
# controller (hugetlb here); giving hugetlb its own v1 hierarchy releases it.
if [ -d /sys/fs/cgroup/unified ] && [ -f /sys/fs/cgroup/unified/cgroup.controllers ] \
   && grep -qw hugetlb /sys/fs/cgroup/unified/cgroup.controllers \
   && ! grep -q ' /sys/fs/cgroup/hugetlb ' /proc/mounts; then
    echo "setup: mounting the hugetlb controller as a cgroup v1 hierarchy (for crun)"
    mkdir -p /sys/fs/cgroup/hugetlb
    mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb || \
        echo "setup: warning: could not mount hugetlb v1 hierarchy; crun may refuse to run" >&2
fi
