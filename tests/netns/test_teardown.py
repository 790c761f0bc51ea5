"""`lbd --teardown` needs only the pins (docs/operating.md: Running it under systemd,
Teardown): with a broken config, a missing one, or --bpffs, it detaches lbd's
program from the interface it is attached to and removes the pins.

Each case runs the real daemon in the lab's lbd namespace (native XDP on
eth0), kills it with -9 so the program stays attached and pinned, breaks the
config, and tears down from inside that network namespace."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns.lbdrun import LbdUnderTest

pytestmark = pytest.mark.netns


def attached_program(lab) -> str | None:
    return lab.read_xdp_mode("lbd", "eth0")


@pytest.fixture
def killed_lbd(lab):
    """lbd started, then killed -9: its program attached to eth0, its pins kept."""
    daemon = LbdUnderTest(lab)
    daemon.start()
    daemon.kill9()
    assert attached_program(lab) == "native"
    assert glob.glob(os.path.join(lab.bpffs_dir, "lbd", "layout*", "prog"))
    yield daemon
    # whatever the test did: nothing of lbd left attached or pinned
    daemon.stop()
    teardown(lab, "--config", os.path.join(lab.tmpdir, "absent.yaml"), "--bpffs", f"{lab.bpffs_dir}/lbd")
    if attached_program(lab) is not None:
        lab.detach_xdp("lbd", "eth0")


def teardown(lab, *args: str) -> subprocess.CompletedProcess:
    # in lbd's network namespace, with the host's mounts (the pins' bpffs)
    return lab.run("lbd", [sys.executable, "-m", "lbd.cli", "--teardown", *args], host_mounts=True,
                   timeout=60)


def assert_torn_down(lab, result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "detached eth0" in result.stdout, result.stdout
    assert f"unpinned {lab.bpffs_dir}/lbd" in result.stdout, result.stdout
    assert attached_program(lab) is None, "the program is detached"
    assert not os.path.exists(os.path.join(lab.bpffs_dir, "lbd")), "the pins are gone"


def test_teardown_with_a_mistyped_key_uses_the_files_bpffs(lab, killed_lbd):
    path = Path(killed_lbd.config_path)
    path.write_text(path.read_text().replace("interfaces:", "interfacs:"))
    result = teardown(lab, "--config", str(path))
    assert_torn_down(lab, result)
    assert "interfacs" in result.stderr and "not a valid config" in result.stderr


def test_teardown_with_unparseable_yaml_and_bpffs(lab, killed_lbd):
    path = Path(killed_lbd.config_path)
    path.write_text(path.read_text().replace("interfaces: [{", "interfaces: [{{"))
    assert_torn_down(lab, teardown(lab, "--config", str(path), "--bpffs", f"{lab.bpffs_dir}/lbd"))


def test_teardown_with_a_missing_file_and_bpffs(lab, killed_lbd):
    result = teardown(lab, "--config", os.path.join(lab.tmpdir, "absent.yaml"),
                      "--bpffs", f"{lab.bpffs_dir}/lbd")
    assert_torn_down(lab, result)
    assert "cannot read" in result.stderr


def test_teardown_leaves_a_program_that_is_not_lbds(lab):
    # teardown detaches only lbd's pinned program, never another XDP program
    from lbd.testing.lab import pass_program
    _bpf, function = pass_program()
    lab.attach_xdp("lbd", "eth0", function.fd)
    try:
        result = teardown(lab, "--config", os.path.join(lab.tmpdir, "absent.yaml"),
                          "--bpffs", os.path.join(lab.bpffs_dir, "nothing-here"))
        assert result.returncode == 0, result.stderr
        assert "no lbd program pinned" in result.stdout and "detached" not in result.stdout
        assert attached_program(lab) is not None, "someone else's program stays"
    finally:
        lab.detach_xdp("lbd", "eth0")


def test_lbctl_teardown_of_a_running_daemon(lab):
    daemon = LbdUnderTest(lab)
    daemon.start()
    try:
        out = daemon.lbctl("teardown").stdout
        assert "detached eth0" in out and f"unpinned {lab.bpffs_dir}/lbd" in out, out
        assert attached_program(lab) is None
        assert not os.path.exists(os.path.join(lab.bpffs_dir, "lbd"))
        assert daemon.proc.wait(30) == 0, "lbd stops after a teardown"
    finally:
        daemon.stop()
        teardown(lab, "--config", daemon.config_path)
