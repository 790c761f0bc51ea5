"""Prepare a Debian/Ubuntu host to run lbd, and diagnose one that is not ready.

This is the one install path shared by `make test`, `make demo`, `make install`
and the Dockerfile, so it is exercised on every CI run. It only uses the
standard library: it runs under /usr/bin/python3 before any venv exists.

    python3 -m lbd.hostsetup install   # packages, kernel header links, bpffs
    python3 -m lbd.hostsetup check     # say what is missing, change nothing
"""
from __future__ import annotations

import glob
import os
import platform
import subprocess
import sys

# Debian packages lbd needs at run time (bcc and its headers) and the ones the
# test lab and benchmarks use. Kept in one list so install and Dockerfile agree.
RUNTIME_PACKAGES = [
    "python3-bpfcc",      # bcc's Python module (not on PyPI)
    "python3-systemd",    # sd_notify for Type=notify (systemd's own binding)
    "python3-venv",
    "python3-dev",        # builds lbd's Maglev C extension
    "gcc",
    "linux-headers-amd64" if platform.machine() == "x86_64" else "linux-headers-arm64",
    "iproute2",
    "bird2",              # the BGP speaker lbd drives for fleets (lbd-bird.service; lbd/bird.py)
]
LAB_PACKAGES = [
    "ethtool",            # tx checksum offload off on veths (docs/background.md)
    "nginx-light",        # real HTTP backends in the lab
    "libnginx-mod-stream",  # nginx stream: the user-space proxy arm of bench/datapath.py
    "nftables",
    "netsniff-ng",        # trafgen for data-plane benchmarks
    "iputils-ping",
    "tcpdump",            # reads what `lbctl capture` writes (tests/netns/test_capture.py)
    "chromium",           # a real browser for the status page (tests/netns/test_status_page.py)
    "bpftool",
    "prometheus",         # promtool (check metrics, check/test rules) and the server of tests/netns/test_prometheus.py
]
# What `make deb` (systemd/debian/build.py) needs besides RUNTIME_PACKAGES,
# which already build lbd's venv (python3-venv, python3-dev, gcc); dpkg-deb
# itself is in dpkg (Essential). Installed with the lab for the package's
# test (tests/netns/test_deb.py), never on an edge host.
DEB_PACKAGES = [
    "dpkg-dev",           # dpkg-shlibdeps (the libraries the venv links), dpkg-buildflags
    "lintian",            # Debian's checker: the package must have no errors
]
BPFFS = "/sys/fs/bpf"


def _missing_packages(names: list[str]) -> list[str]:
    missing = []
    for name in names:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", name],
            capture_output=True, text=True, check=False,
        )
        if "install ok installed" not in result.stdout:
            missing.append(name)
    return missing


def install_packages(names: list[str]) -> None:
    missing = _missing_packages(names)
    if not missing:
        return
    print(f"hostsetup: installing {' '.join(missing)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        check=True, env=env,
    )


def _module_dir() -> str:
    return f"/lib/modules/{os.uname().release}"


def headers_present() -> bool:
    """bcc needs kernel headers at /lib/modules/$(uname -r)/build."""
    build = os.path.join(_module_dir(), "build")
    return os.path.isfile(os.path.join(build, "include", "generated", "autoconf.h")) or \
        os.path.isdir(os.path.join(build, "include"))


def link_headers() -> None:
    """Point /lib/modules/$(uname -r) at installed headers of another version.

    These hosts run a kernel with no matching header package (docs/background.md).
    XDP programs only use stable UAPI structs, so Debian's headers serve; bcc
    needs both the arch tree (build) and the common tree (source).
    """
    if headers_present():
        return
    arch_trees = sorted(glob.glob("/usr/src/linux-headers-*-amd64")
                        + glob.glob("/usr/src/linux-headers-*-arm64"))
    if not arch_trees:
        raise SystemExit("hostsetup: no /usr/src/linux-headers-*: install linux-headers-amd64")
    build = arch_trees[-1]
    common = build.rsplit("-", 1)[0] + "-common"
    os.makedirs(_module_dir(), exist_ok=True)
    for name, target in (("build", build), ("source", common)):
        link = os.path.join(_module_dir(), name)
        if os.path.islink(link) or os.path.exists(link):
            os.unlink(link)
        os.symlink(target, link)
    print(f"hostsetup: linked {_module_dir()}/build -> {build}", flush=True)


def bpffs_mounted(path: str = BPFFS) -> bool:
    with open("/proc/mounts", encoding="ascii") as mounts:
        return any(line.split()[1] == path and line.split()[2] == "bpf" for line in mounts)


def mount_bpffs(path: str = BPFFS) -> None:
    if bpffs_mounted(path):
        return
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "bpf", "bpf", path], check=True)


def problems() -> list[str]:
    """What stops lbd from starting on this host, each with what to do."""
    found = []
    try:
        import bcc  # noqa: F401  (only checking that it imports)
    except ImportError:
        found.append("bcc's Python module is missing: apt-get install python3-bpfcc, "
                     "and run lbd from a venv made with --system-site-packages")
    if not headers_present():
        found.append(f"no kernel headers at {_module_dir()}/build (bcc compiles the program "
                     "at start): apt-get install linux-headers-amd64, then "
                     "`python3 -m lbd.hostsetup install` links them")
    if not bpffs_mounted():
        found.append(f"bpffs is not mounted at {BPFFS}: mount -t bpf bpf {BPFFS}")
    return found


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "install"
    if command == "install":
        if os.geteuid() != 0:
            raise SystemExit("hostsetup install: run as root (apt-get, /lib/modules, mount)")
        with_lab = "--runtime-only" not in argv
        install_packages(RUNTIME_PACKAGES + (LAB_PACKAGES + DEB_PACKAGES if with_lab else []))
        link_headers()
        mount_bpffs()
        return 0
    if command == "check":
        issues = problems()
        for issue in issues:
            print(f"missing: {issue}")
        return 1 if issues else 0
    if command == "packages":
        print(" ".join(RUNTIME_PACKAGES + LAB_PACKAGES + DEB_PACKAGES))
        return 0
    raise SystemExit(f"usage: {argv[0]} install [--runtime-only] | check | packages")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
