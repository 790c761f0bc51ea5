"""`make install` end to end, and the installed unit under a real systemd.

The install goes to a scratch directory (PREFIX, ETCDIR, SYSTEMD_DIR
overridden), never to /opt or /etc. The unit test then boots a private
systemd as PID 1 of its own PID, mount, cgroup and network namespaces, with
the installed lbd.service and all its sandboxing, and checks what an operator
relies on: READY only once XDP is attached, watchdog pings, `systemctl
reload` applying a good file and failing on a bad one, a restart that keeps
the program attached and adopts the pins, a stop that leaves it forwarding,
and `lbd --teardown` removing it all.

The scratch directory is under /var/lib, not /tmp: the unit's PrivateTmp=
would hide an ExecStart= under /tmp.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
HOST_NS = f"lbdit-h{os.getpid()}"
BACKEND_NS = f"lbdit-b{os.getpid()}"
IFACE = "lbdit0"  # lives in HOST_NS only, so the name cannot clash


def _run(*args: str, timeout: float = 60, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=check,
                          **kwargs)


@pytest.fixture(scope="module")
def installed():
    """`make install` into a scratch root; yields its paths; always removed."""
    if os.geteuid() != 0:
        pytest.skip("make install needs root (apt-get, bpffs)")
    scratch = Path(tempfile.mkdtemp(prefix="lbd-install-test.", dir="/var/lib"))
    os.chmod(scratch, 0o755)
    paths = {
        "PREFIX": scratch / "opt/lbd",
        "ETCDIR": scratch / "etc",
        "SYSTEMD_DIR": scratch / "etc/systemd/system",
        "BINDIR": scratch / "bin",
    }
    try:
        result = _run("make", "-C", str(ROOT), "install", *(f"{k}={v}" for k, v in paths.items()),
                      timeout=900, check=False)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        yield {"scratch": scratch, **paths}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_make_install_puts_everything_in_place(installed):
    prefix, etc, units = installed["PREFIX"], installed["ETCDIR"], installed["SYSTEMD_DIR"]
    lbd = prefix / "venv/bin/lbd"

    version = _run(str(lbd), "--version").stdout.strip()
    assert re.fullmatch(r"lbd \S+", version), version
    for tool in ("lbd", "lbctl", "lbd-backend"):  # on the operator's PATH
        assert (installed["BINDIR"] / tool).resolve() == (prefix / "venv/bin" / tool).resolve()
    # lbd itself, not an editable link back to this checkout, with its C sources
    where = _run(str(prefix / "venv/bin/python"), "-c",
                 "import lbd, bcc; from lbd.dataplane import layout; print(lbd.__file__, layout.XDP_DIR)",
                 cwd="/").stdout
    assert str(prefix) in where and "/work/" not in where.split()[0], where
    assert (prefix / "venv").is_dir() and (prefix / "venv/pyvenv.cfg").read_text().count(
        "include-system-site-packages = true") == 1

    config = etc / "lbd/lbd.yaml"
    assert config.read_text() == (ROOT / "configs/lbd.yaml").read_text()
    assert _run(str(lbd), "check", str(config)).returncode == 0
    env = (etc / "default/lbd").read_text()
    assert f"LBD_CONFIG={config}\n" in env

    unit = (units / "lbd.service").read_text()
    assert f"ExecStart={lbd} --config ${{LBD_CONFIG}} $LBD_ARGS" in unit
    documentation = [uri.removeprefix("file:") for line in unit.splitlines() if line.startswith("Documentation=")
                     for uri in line.removeprefix("Documentation=").split()]
    assert documentation and all(Path(page).is_file() for page in documentation), documentation  # systemctl help
    assert f"EnvironmentFile=-{etc}/default/lbd" in unit
    # On the real root: ExecStart= now exists, so verify needs no stand-ins.
    result = _run("systemd-analyze", "verify", "--man=no", "--generators=no", str(units / "lbd.service"),
                  check=False)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr
    # the BGP speaker's unit: our paths, and bird from the runtime packages
    bird_unit = (units / "lbd-bird.service").read_text()
    assert f"ExecStartPre={lbd} bird-config --config ${{LBD_CONFIG}} --if-missing" in bird_unit
    result = _run("systemd-analyze", "verify", "--man=no", "--generators=no",
                  str(units / "lbd-bird.service"), check=False)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr


def test_make_install_again_upgrades_lbd_and_keeps_the_operators_files(installed):
    etc = installed["ETCDIR"]
    config, env = etc / "lbd/lbd.yaml", etc / "default/lbd"
    config.write_text(config.read_text() + "# edited by the operator\n")
    env.write_text(env.read_text() + "LBD_ARGS=--log-level DEBUG\n")
    edited = config.read_text(), env.read_text()
    marker = installed["PREFIX"] / "venv/lib/python3.11/site-packages/lbd/__init__.py"
    before = marker.stat().st_mtime_ns

    paths = {k: v for k, v in installed.items() if k != "scratch"}
    result = _run("make", "-C", str(ROOT), "install", *(f"{k}={v}" for k, v in paths.items()),
                  timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (config.read_text(), env.read_text()) == edited
    assert marker.stat().st_mtime_ns != before, "lbd was not reinstalled"


# --- the installed unit under a real systemd -------------------------------------

BOOT = """\
#!/bin/bash
# PID 1 of fresh PID, mount and cgroup namespaces, inside HOST_NS (ip netns
# exec gave us a fresh /sys): our own /run, bpffs and cgroup2, then systemd.
set -e
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
export container=lbd-install-test SYSTEMD_UNIT_PATH={units}
exec /lib/systemd/systemd --system --log-target=console --log-level=notice
"""

TEST_DROP_IN = """\
# Only what a namespace without journald or network-online.target needs;
# every sandboxing setting of the unit stays as installed.
[Unit]
DefaultDependencies=no
After=
Wants=
[Service]
StandardOutput=append:{log}
StandardError=append:{log}
"""

CONFIG = """\
interfaces:
  - {{name: {iface}, mode: native}}
vips:
  - name: web
    address: 198.19.250.10
    port: 80
    protocol: tcp
    mode: dsr
    # checks through the VIP's path: the TC program, SO_MARK and policy
    # routing must work inside the unit's sandbox too
    health: {{type: tcp, interval: 1s, timeout: 500ms}}
    backends:
      - {{address: 198.19.250.2}}
"""


def _cgroup2_root() -> Path:
    with open("/proc/mounts", encoding="ascii") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[2] == "cgroup2":
                return Path(fields[1])
    pytest.fail("no cgroup2 hierarchy mounted (systemd needs one)", pytrace=False)


class PrivateSystemd:
    """systemd as PID 1 in its own namespaces, running one installed unit."""

    def __init__(self, installed: dict, unit: str = "lbd"):
        self.unit = unit
        self.scratch: Path = installed["scratch"]
        self.lbd = installed["PREFIX"] / "venv/bin/lbd"
        self.python = installed["PREFIX"] / "venv/bin/python"
        self.config = installed["ETCDIR"] / "lbd/lbd.yaml"
        # each boot its own units and log: a module's tests boot one after another
        self.units = Path(tempfile.mkdtemp(prefix=f"units-{unit}-", dir=self.scratch))
        self.log = self.units / f"{unit}.log"
        self.cgroup = _cgroup2_root() / f"lbd-install-test-{os.getpid()}"
        self.proc: subprocess.Popen | None = None
        self.pid1: int | None = None

        (self.units / f"{unit}.service.d").mkdir(parents=True)
        shutil.copy(installed["SYSTEMD_DIR"] / f"{unit}.service", self.units / f"{unit}.service")
        drop_in = TEST_DROP_IN + ("WatchdogSec=4s\n" if unit == "lbd" else "")
        (self.units / f"{unit}.service.d/test.conf").write_text(drop_in.format(log=self.log))
        (self.units / "default.target").write_text(f"[Unit]\nDescription=test\nWants={unit}.service\n")
        self.boot = self.scratch / "boot.sh"
        self.boot.write_text(BOOT.format(units=self.units))
        self.boot.chmod(0o755)
        self.config.write_text(CONFIG.format(iface=IFACE))

    def start(self) -> None:
        _run("ip", "netns", "add", HOST_NS)
        _run("ip", "netns", "add", BACKEND_NS)
        _run("ip", "-n", HOST_NS, "link", "add", IFACE, "type", "veth", "peer", "name", "lbdit1",
             "netns", BACKEND_NS)
        _run("ip", "-n", HOST_NS, "addr", "add", "198.19.250.1/24", "dev", IFACE)
        _run("ip", "-n", BACKEND_NS, "addr", "add", "198.19.250.2/24", "dev", "lbdit1")
        for ns, dev in ((HOST_NS, IFACE), (HOST_NS, "lo"), (BACKEND_NS, "lbdit1")):
            _run("ip", "-n", ns, "link", "set", dev, "up")
        self.cgroup.mkdir()
        # Enter our own cgroup first, so everything the private systemd makes
        # (init.scope, system.slice) lands under it and goes with it.
        self.proc = subprocess.Popen(
            ["bash", "-c", f'echo $$ > {self.cgroup}/cgroup.procs && exec ip netns exec {HOST_NS} '
                           f'unshare --pid --mount --cgroup --fork --mount-proc --propagation private '
                           f'{self.boot}'],
            stdout=open(self.scratch / "systemd.log", "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.pid1 is None:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            self.pid1 = int(pids[0]) if pids else None
            time.sleep(0.1)
        assert self.pid1, (self.scratch / "systemd.log").read_text()

    def stop(self) -> None:
        if self.pid1:
            try:
                os.kill(self.pid1, signal.SIGKILL)  # PID 1 of its namespace: takes everything in it along
            except ProcessLookupError:
                pass
        if self.proc:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for ns in (HOST_NS, BACKEND_NS):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        deadline = time.monotonic() + 10
        while self.cgroup.exists() and time.monotonic() < deadline:
            for path in sorted(self.cgroup.rglob("*"), key=lambda p: -len(p.parts)):
                if path.is_dir():
                    try:
                        path.rmdir()
                    except OSError:
                        pass
            try:
                self.cgroup.rmdir()
            except OSError:
                time.sleep(0.2)

    def enter(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        return _run("nsenter", "-t", str(self.pid1), "-m", "-p", "-n", *args, timeout=timeout, check=check)

    def systemctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        return self.enter("systemctl", "--no-pager", *args, check=check)

    def prop(self, name: str) -> str:
        return self.systemctl("show", self.unit, "-p", name, "--value").stdout.strip()

    def wait_state(self, active: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.prop("ActiveState")
            if state == active:
                return
            if state == "failed":
                break
            time.sleep(0.5)
        pytest.fail(f"{self.unit}.service is {self.prop('ActiveState')}, not {active}:\n{self.daemon_log()}")

    def daemon_log(self) -> str:
        return self.log.read_text() if self.log.exists() else "(no log)"

    def xdp_attached(self) -> bool:
        return "prog/xdp" in _run("ip", "-n", HOST_NS, "link", "show", IFACE).stdout

    def metrics(self) -> str:
        script = "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9100/metrics',timeout=5).read().decode())"
        return self.enter(str(self.python), "-c", script).stdout

    def metric(self, text: str, name: str) -> float:
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, flags=re.M)
        assert match, f"{name} not in /metrics"
        return float(match.group(1))


@pytest.fixture
def boot(installed):
    """boot(unit): a private systemd running that installed unit; stopped after the test."""
    if not shutil.which("nsenter") or not shutil.which("unshare"):
        pytest.fail("nsenter/unshare missing: apt-get install util-linux", pytrace=False)
    booted = []

    def start(unit: str) -> PrivateSystemd:
        booted.append(PrivateSystemd(installed, unit))
        booted[-1].start()
        return booted[-1]
    try:
        yield start
    finally:
        for one in booted:
            one.stop()


@pytest.fixture
def systemd(boot):
    return boot("lbd")


def test_installed_unit_runs_lbd_under_systemd_with_its_sandbox(systemd):
    # Type=notify: active only after READY=1, which the daemon sends after attaching.
    systemd.wait_state("active")
    assert systemd.xdp_attached(), systemd.daemon_log()
    log = systemd.daemon_log()
    assert log.index("xdp_attached") < log.index(" ready "), log
    assert "level=DEBUG" in log, "LBD_ARGS from /etc/default/lbd did not reach lbd"
    assert "health_path_attached" in log, log
    assert "0x6c620000/0xffff0000" in systemd.enter("ip", "rule").stdout
    first_pid = systemd.prop("MainPID")

    # Watchdog pings (WatchdogSec=4s in the test drop-in: one every 2 s).
    first_ping = systemd.prop("WatchdogTimestampMonotonic")
    time.sleep(5)
    assert systemd.prop("WatchdogTimestampMonotonic") != first_ping
    assert systemd.prop("ActiveState") == "active"

    # A good change: `systemctl reload` succeeds and the daemon applies it.
    before = systemd.metric(systemd.metrics(), 'lbd_reloads_total{result="success"}')
    good = systemd.config.read_text()
    systemd.config.write_text(good.replace("198.19.250.10", "198.19.250.11"))
    result = systemd.systemctl("reload", "lbd")
    assert result.returncode == 0, result.stderr + systemd.daemon_log()
    deadline = time.monotonic() + 30
    while systemd.metric(systemd.metrics(), 'lbd_reloads_total{result="success"}') == before:
        assert time.monotonic() < deadline, systemd.daemon_log()
        time.sleep(0.5)
    status = json.loads(systemd.enter(str(systemd.python), "-c",
                                      "import urllib.request;print(urllib.request.urlopen("
                                      "'http://127.0.0.1:9100/status',timeout=5).read().decode())").stdout)
    assert "198.19.250.11" in json.dumps(status)

    # A bad file: `systemctl reload` fails, the daemon keeps running the good one.
    systemd.config.write_text(good + "vips: [{address: nope}]\n")
    result = systemd.systemctl("reload", "lbd")
    assert result.returncode != 0
    assert systemd.prop("ActiveState") == "active" and systemd.prop("MainPID") == first_pid
    systemd.config.write_text(good)

    # Restart: the program never leaves the interface; the new daemon adopts the pins.
    attached_throughout = True
    restart = subprocess.Popen(["nsenter", "-t", str(systemd.pid1), "-m", "-p", "-n",
                                "systemctl", "restart", "lbd"])
    while restart.poll() is None:
        attached_throughout &= systemd.xdp_attached()
        time.sleep(0.05)
    assert restart.returncode == 0, systemd.daemon_log()
    systemd.wait_state("active")
    assert attached_throughout
    assert systemd.prop("MainPID") != first_pid
    assert "datapath_adopted" in systemd.daemon_log()

    # Stop: the daemon goes, the datapath stays.
    assert systemd.systemctl("stop", "lbd").returncode == 0
    assert systemd.prop("ActiveState") == "inactive"
    assert systemd.xdp_attached()
    assert systemd.prop("Result") == "success", systemd.daemon_log()

    # Teardown (by hand, as root): detached and unpinned.
    result = systemd.enter(str(systemd.lbd), "--teardown", "--config", str(systemd.config), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not systemd.xdp_attached()
    assert "lbd" not in systemd.enter("ls", "/sys/fs/bpf").stdout.split()
    assert "0x6c620000" not in systemd.enter("ip", "rule").stdout


BACKEND_VIP = "198.19.250.10"


def test_installed_backend_unit_prepares_the_host_at_boot(installed, boot):
    """lbd-backend.service under its sandbox: the VIP on lo, the decap program
    on the interface with the interface's prefixes as its forward list, and a
    stop that leaves both (the backend keeps serving)."""
    env = installed["ETCDIR"] / "default/lbd-backend"
    env.write_text(f'LBD_BACKEND_PREPARE_ARGS="--mode ipip --vip {BACKEND_VIP} --interface {IFACE}"\n')
    try:
        backend = boot("lbd-backend")
        backend.wait_state("active")
        assert backend.prop("Result") == "success", backend.daemon_log()
        assert f"attached lbd_decap to {IFACE}" in backend.daemon_log(), backend.daemon_log()
        lo = _run("ip", "-n", HOST_NS, "-o", "addr", "show", "dev", "lo").stdout
        assert f"inet {BACKEND_VIP}/32" in lo, lo
        assert backend.xdp_attached()
        tool = installed["PREFIX"] / "venv/bin/lbd-backend"
        check = _run("ip", "netns", "exec", HOST_NS, str(tool), "check", "--mode", "ipip", "--vip", BACKEND_VIP,
                     "--interface", IFACE, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "sends second-chance packets on to 198.19.250.0/24" in check.stdout, check.stdout

        assert backend.systemctl("stop", "lbd-backend").returncode == 0
        assert backend.prop("ActiveState") == "inactive"
        assert backend.xdp_attached() and BACKEND_VIP in _run("ip", "-n", HOST_NS, "addr", "show", "dev", "lo").stdout
    finally:
        env.unlink(missing_ok=True)


def test_the_backend_unit_fails_loudly_without_its_file(installed, boot):
    backend = boot("lbd-backend")
    deadline = time.monotonic() + 60
    while backend.prop("ActiveState") not in ("failed", "active") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert backend.prop("ActiveState") == "failed"
    assert not backend.xdp_attached()
