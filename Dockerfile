# lbd in a container: the same install as `make install` on a host (hostsetup's
# runtime package list, then `make install-lbd`), run with host networking.
#
# Build:  docker build -t lbd .
# Run (the host has run `python3 -m lbd.hostsetup install --runtime-only` or
# `make install`, so bpffs is mounted and /lib/modules/$(uname -r)/build points
# at kernel headers under /usr/src, which bcc compiles against at start):
#
#   docker run -d --name lbd --network host \
#     --cap-drop ALL --cap-add BPF --cap-add NET_ADMIN --cap-add PERFMON --cap-add SYS_ADMIN \
#     --security-opt apparmor=unconfined \
#     -v /sys/fs/bpf:/sys/fs/bpf \
#     -v /lib/modules:/lib/modules:ro -v /usr/src:/usr/src:ro \
#     -v /etc/lbd:/etc/lbd:ro -v /run/lbd:/run/lbd \
#     lbd
#
#   docker kill -s HUP lbd    reload /etc/lbd/lbd.yaml
#   docker stop lbd           stop; the XDP program stays attached (pinned)
#   docker exec lbd lbctl status
#   docker run --rm --network host --cap-add ... -v /sys/fs/bpf:/sys/fs/bpf \
#     -v /etc/lbd:/etc/lbd:ro lbd --teardown --config /etc/lbd/lbd.yaml
#
# Capabilities: BPF (maps, program), NET_ADMIN (attach XDP), PERFMON (verifier
# privileges), SYS_ADMIN (bcc and lbd open maps by id). Docker's default
# seccomp profile admits bpf() with SYS_ADMIN (and with BPF from Docker 23 on).
# AppArmor's docker-default profile forbids writing under /sys/fs, where the
# pins go. Docker mounts /proc/sys read-only: for ipip VIPs turn forwarding on
# on the host (sysctl net.ipv4.conf.<interface>.forwarding=1).
FROM debian:12-slim

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/lbd/venv/bin:$PATH

# hostsetup is standard-library Python run by /usr/bin/python3; make runs
# install-lbd. Everything else comes from hostsetup's own package list.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.11.2-1+b1 make=4.3-4.1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src/lbd
COPY pyproject.toml Makefile ./
COPY lbd/ lbd/
COPY xdp/ xdp/
COPY systemd/ systemd/
COPY configs/ configs/

# The same two steps as `make install`, less what only a host needs: no
# header links and no bpffs mount here (the host's are mounted at run time).
RUN python3 -c 'from lbd import hostsetup; hostsetup.install_packages(hostsetup.RUNTIME_PACKAGES)' \
    && rm -rf /var/lib/apt/lists/*
RUN make install-lbd

WORKDIR /
ENTRYPOINT ["lbd"]
CMD ["--config", "/etc/lbd/lbd.yaml"]
