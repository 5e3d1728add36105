#!/bin/sh
# Installs the system packages crispy and its tests use, and prepares the node.
# Idempotent: a second run installs nothing and changes nothing.
set -eu

script_dir=$(cd "$(dirname "$0")" && pwd)

# The pod network: crispy's default bridge network, installed only where the conf dir
# holds no network config at all (an admin's or a cluster's own network always wins).
# CRISPY_CNI_CONF_DIR points it elsewhere for the tests.
install_default_cni() {
    conf_dir="${CRISPY_CNI_CONF_DIR:-/etc/cni/net.d}"
    for f in "$conf_dir"/*.conf "$conf_dir"/*.conflist "$conf_dir"/*.json; do
        [ -e "$f" ] && return 0
    done
    echo "setup: installing the default pod network config into $conf_dir"
    mkdir -p "$conf_dir"
    # Through a temp name no CNI loader reads, so crispyd never sees half a file.
    cp "$script_dir/cni/10-crispy.conflist" "$conf_dir/.10-crispy.conflist.tmp"
    chmod 0644 "$conf_dir/.10-crispy.conflist.tmp"
    mv "$conf_dir/.10-crispy.conflist.tmp" "$conf_dir/10-crispy.conflist"
}

# CRISPY_SETUP_ONLY=cni runs just that step (the tests use it with CRISPY_CNI_CONF_DIR).
if [ "${CRISPY_SETUP_ONLY:-}" = cni ]; then
    install_default_cni
    exit 0
fi

PACKAGES="runc crun runsc containernetworking-plugins iptables iproute2 util-linux busybox-static docker-registry python3-venv"
# The test fixtures compile a static pause (tests/support/pause), as Kubernetes builds its own.
PACKAGES="$PACKAGES gcc libc6-dev"
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

install_default_cni
