"""Run the real lbd daemon in the lab's lbd namespace and talk to it the way
an operator does: a YAML file, lbctl over the control socket, /metrics."""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lbd.dataplane import flowhash, maglev
from lbd.testing.lab import Lab

STREAMER = str(Path(__file__).with_name("streamer.py"))
CONNECTOR = str(Path(__file__).with_name("connector.py"))
HEALTH = "{type: http, path: /healthz, interval: 500ms, timeout: 300ms, rise: 2, fall: 2}"


def backends(lab: Lab, names, family: int = 4, weights=None, drain=()) -> str:
    items = []
    for i, name in enumerate(names):
        node = lab.backends[name]
        address = node.v4 if family == 4 else f"'{node.v6}'"
        extra = f", weight: {weights[i]}" if weights else ""
        extra += ", drain: true" if name in drain else ""
        items.append(f"{{address: {address}{extra}}}")
    return "[" + ", ".join(items) + "]"


def vip_entry(lab: Lab, name: str, vip: str, port: int, protocol: str, mode: str, names,
              health: str | None = None) -> str:
    """One line of `vips:` (flow style) with the named lab backends of the
    VIP's family, and a health section if given."""
    family = 6 if ":" in vip else 4
    address = vip if family == 4 else f"'{vip}'"
    check = f"health: {health}, " if health else ""
    return (f"  - {{name: {name}, address: {address}, port: {port}, protocol: {protocol}, mode: {mode}, "
            f"{check}backends: {backends(lab, names, family)}}}\n")


def table_places(lab: Lab, names, flows, vip: str, port: int, proto: int) -> list[str]:
    """The backend (name) the VIP's table of `names` (equal weights, the default
    ring) gives each flow (client address, client port): the Maglev and flow
    hash references, as the program reads them."""
    table = maglev.build_table([(lab.backends[n].v4.packed, 100, i + 1) for i, n in enumerate(names)])
    dst = ipaddress.ip_address(vip)
    return [names[table[flowhash.table_slot(flowhash.flow_hash(ipaddress.ip_address(src), dst, sport, port, proto),
                                            len(table))] - 1] for src, sport in flows]


def host_config(lab: Lab, socket_path: str, written_by: str, host=None) -> str:
    """Everything of an lbd host's config but its VIPs (which follow `vips:`):
    the lab's lbd host, or `host` (a Node: lbd2 of a fleet lab)."""
    host = host or lab.lbd
    return f"""# written by {written_by}
interfaces: [{{name: eth0, mode: native}}]
http: {{listen: 127.0.0.1:9100}}
control: {{socket: {socket_path}}}
bpffs: {lab.bpffs_dir}/{host.name}
ipip: {{source_v4: {host.v4}, source_v6: '{host.v6}'}}
vips:
"""


def lab_config(lab: Lab, socket_path: str, web_backends=("b1", "b2", "b3"), web_drain=()) -> str:
    """The test VIPs. VIP addresses are the lab's (on every backend's lo)."""
    return host_config(lab, socket_path, "tests/netns/lbdrun.py") + f"""\
  - {{name: web4, address: 198.18.100.1, port: 80, protocol: tcp, mode: dsr, health: {HEALTH},
     backends: {backends(lab, web_backends, drain=web_drain)}}}
  - {{name: echo4, address: 198.18.100.1, port: 5300, protocol: udp, mode: dsr,
     backends: {backends(lab, ["b1", "b2", "b3"])}}}
  - {{name: web6, address: 'fd00:100::1', port: 80, protocol: tcp, mode: dsr,
     backends: {backends(lab, ["b1", "b2", "b3"], 6)}}}
  - {{name: ipip4, address: 198.18.100.2, port: 80, protocol: tcp, mode: ipip,
     backends: {backends(lab, ["r1", "r2", "r3"])}}}
  - {{name: ipip6, address: 'fd00:100::2', port: 80, protocol: tcp, mode: ipip,
     backends: {backends(lab, ["r1", "r2", "r3"], 6)}}}
  - {{name: weighted, address: 198.18.100.3, port: 80, protocol: tcp, mode: dsr,
     backends: {backends(lab, ["b1", "b2", "b3"], weights=[100, 100, 200])}}}
  - {{name: sticky6, address: 'fd00:100::3', port: 80, protocol: tcp, mode: dsr, affinity: client,
     backends: {backends(lab, ["b1", "b2", "b3"], 6)}}}
"""


class LbdUnderTest:
    """lbd on one lab host ("lbd" by default; "lbd2" in a fleet lab), with
    its files in `directory` (default: the lab's tmpdir) and its pins under
    bpffs_dir/<host>."""

    def __init__(self, lab: Lab, host: str = "lbd", config: str | None = None,
                 directory: str | None = None):
        self.lab, self.host = lab, host
        self.dir = directory or lab.tmpdir
        self.socket = os.path.join(self.dir, "lbd.sock")
        self.config_path = os.path.join(self.dir, "lbd.yaml")
        self.proc: subprocess.Popen | None = None
        self.write_config(config or lab_config(lab, self.socket))

    def write_config(self, text: str) -> None:
        Path(self.config_path).write_text(text)

    def start(self, timeout: float = 60) -> None:
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        self.proc = self.lab.spawn(self.host, [sys.executable, "-m", "lbd.cli", "--config", self.config_path],
                                   host_mounts=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lbd exited {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.socket):
                try:
                    if self.status()["ready"]:
                        return
                except (SystemExit, OSError, ValueError):
                    pass
            time.sleep(0.2)
        raise TimeoutError(f"lbd not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return Path(self.proc.log_path).read_text() if self.proc and self.proc.log_path else ""

    def lbctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "lbd.lbctl", "--socket", self.socket, *args],
                                capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"lbctl {' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result

    def status(self) -> dict:
        from lbd.control_client import call
        code, body = call(self.socket, "GET", "/status")
        assert code == 200, body
        return body

    def vip(self, name: str) -> dict:
        return next(v for v in self.status()["vips"] if v["name"] == name)

    def metrics(self) -> str:
        from lbd.control_client import UnixConnection
        connection = UnixConnection(self.socket)
        connection.request("GET", "/metrics")
        body = connection.getresponse().read().decode()
        connection.close()
        return body

    def metric(self, name: str, **labels) -> float:
        """The value of one sample of /metrics (0 if absent)."""
        from prometheus_client.parser import text_string_to_metric_families
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def metric_sum(self, name: str, **labels) -> float:
        """The sum of every sample of one metric of /metrics whose labels match."""
        from prometheus_client.parser import text_string_to_metric_families
        return sum(sample.value for family in text_string_to_metric_families(self.metrics())
                   for sample in family.samples
                   if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc:
            self.lab.stop(self.proc)

    def teardown(self) -> None:
        """Stop the daemon and leave the lab as it was: program detached, pins
        gone, so the next test's daemon starts clean."""
        self.stop()
        subprocess.run([sys.executable, "-m", "lbd.cli", "--teardown", "--config", self.config_path],
                       capture_output=True, timeout=60)

    def conntrack_keys(self) -> set[str]:
        """Keys of the pinned connection table, read with bpftool (not lbd)."""
        pin_dirs = [d for d in Path(self.lab.bpffs_dir, self.host).iterdir() if d.name.startswith("layout")]
        result = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(pin_dirs[0] / "conntrack")],
                                capture_output=True, text=True, check=True)
        return {json.dumps(entry["key"]) for entry in json.loads(result.stdout)}

    def start_streams(self, vip: str, sources, duration: float) -> subprocess.Popen:
        proc = self.lab.spawn(self.lab.client, [sys.executable, STREAMER, vip, "80", str(duration),
                                                *map(str, sources)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        line = proc.stdout.readline().strip()
        assert line.startswith("started"), line
        proc.ports = json.loads(line.removeprefix("started").strip() or "{}")  # source -> local port
        return proc

    @staticmethod
    def stream_results(proc: subprocess.Popen, timeout: float) -> list[dict]:
        out, _ = proc.communicate(timeout=timeout)
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@contextlib.contextmanager
def running(lab: Lab, config_for=None):
    """lbd started on the lab (config_for(socket_path) -> its YAML; default
    lab_config), torn down afterwards whatever happened."""
    daemon = LbdUnderTest(lab)
    if config_for:
        daemon.write_config(config_for(daemon.socket))
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.teardown()


class Connections:
    """New TCP connections through a VIP from the lab's client, paced, until
    stop() (or max_count / max_s, so the loop is bounded without the test)."""

    def __init__(self, lab: Lab, vip: str, sources, per_s: float = 100, max_count: int = 3000,
                 max_s: float = 60, port: int = 80):
        self.proc = lab.spawn(lab.client, [sys.executable, CONNECTOR, vip, str(port), str(per_s),
                                           str(max_count), str(max_s), *map(str, sources)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        line = self.proc.stdout.readline().strip()
        assert line == "started", line

    def stop(self, timeout: float = 30) -> list[dict]:
        """Stop and return one dict per connection: t, source, backend, error."""
        out, _ = self.proc.communicate("stop\n", timeout=timeout)
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_for(condition, timeout: float, every: float = 0.1, what: str = "condition"):
    """Poll until condition() is truthy (returned), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout}s")
