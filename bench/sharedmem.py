"""The shared-memory comparison (docs/background.md): nginx limit_req per client, three ways.

Real nginx (Debian nginx-light), `limit_req` keyed by `$binary_remote_addr`,
one worker per core, the same clients and request mix in every arm, in one run:

  shared_memory        one nginx, worker_processes = cores, `reuseport`, one
                       limit zone in shared memory for all workers
  local_kernel_hash    one single-worker nginx per core, each its own zone,
                       all on the same VIP:80 with SO_REUSEPORT: the kernel
                       spreads a client's connections over them by 4-tuple
  lbd_client_affinity  one single-worker nginx per core, each its own zone,
                       each in its own backend namespace behind an lbd VIP
                       with client affinity (L2 DSR, native XDP)

Topology (own namespaces): cli eth0 -- in0 lb out1 -- eth0 be1, out2 -- eth0 be2.
Every arm crosses lb: by kernel forwarding (the first two, route to be1) or
by lbd's XDP program on in0 (the third); replies go back through lb's
kernel forwarding in every arm. lbd is driven through lbd.dataplane.maps /
lbd.dataplane.programmer in this process, as the daemon would drive it.

Clients: a 2-process asyncio (uvloop) HTTP/1.1 client in `cli` with 64
source addresses, 4 concurrent connections each, a new connection for every
request (`Connection: close`), as fast as answers come back. The limit is
RATE r/s per client address (no burst); limit_ratio = requests answered 200
per client per second / RATE (1.0 is exact), averaged over clients.
cpu_us_per_req is the CPU time (user+sys) of the nginx processes per request;
cpu_total_us_per_req is the whole machine's busy time per request (clients,
kernel and XDP included; other load on the machine shows up there).

Writes bench/results/sharedmem.json:
  {"arms": {"<arm>": {"rps", "p50_ms", "p99_ms", "cpu_us_per_req", "limit_ratio", ...}}}
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import arguments, loadavg, save
from bench.netline import NamespaceLine, nsx, sh
from lbd.testing.netns import stop_groups

REPO = Path(__file__).resolve().parent.parent
ARMS = ["shared_memory", "local_kernel_hash", "lbd_client_affinity"]
RATE = 5          # r/s per client address
VIP = "198.18.100.1"
MAC = {"cli": "02:00:c6:12:10:01", "in0": "02:00:c6:12:10:02",
       "out1": "02:00:c6:12:02:01", "be1": "02:00:c6:12:02:02",
       "out2": "02:00:c6:12:03:01", "be2": "02:00:c6:12:03:02"}


def client_addresses(n: int) -> list[str]:
    return [f"198.18.10.{10 + i}" for i in range(n)]


class Net(NamespaceLine):
    ROLES = ("cli", "lb", "be1", "be2")
    SYSCTLS = ("net.ipv4.tcp_tw_reuse=1", "net.core.somaxconn=4096",
               "net.ipv4.ip_local_port_range=10000 60999")

    def __init__(self, clients: int):
        super().__init__(1)
        self.clients = client_addresses(clients)

    def _build(self) -> None:
        n = self.names
        for a, a_if, b, b_if in (("cli", "eth0", "lb", "in0"), ("lb", "out1", "be1", "eth0"),
                                 ("lb", "out2", "be2", "eth0")):
            a_mac = MAC[a if a == "cli" else a_if]
            b_mac = MAC[b_if if b == "lb" else b]
            sh(["ip", "-n", n[a], "link", "add", a_if, "address", a_mac, "type", "veth",
                "peer", "name", b_if, "address", b_mac, "netns", n[b]])
            for ns, dev in ((n[a], a_if), (n[b], b_if)):
                sh(["ip", "-n", ns, "link", "set", dev, "up"])
                sh(nsx(ns, "ethtool", "-K", dev, "tx", "off"))
        for address in self.clients:
            sh(["ip", "-n", n["cli"], "addr", "add", f"{address}/24", "dev", "eth0"])
        for node, dev, cidr in (("lb", "in0", "198.18.10.1/24"), ("lb", "out1", "198.18.2.1/24"),
                                ("be1", "eth0", "198.18.2.2/24"), ("lb", "out2", "198.18.3.1/24"),
                                ("be2", "eth0", "198.18.3.2/24")):
            sh(["ip", "-n", n[node], "addr", "add", cidr, "dev", dev])
        sh(["ip", "-n", n["cli"], "route", "add", "198.18.100.0/24", "via", "198.18.10.1"])
        for node, gw in (("be1", "198.18.2.1"), ("be2", "198.18.3.1")):
            sh(["ip", "-n", n[node], "route", "add", "default", "via", gw])
            sh(["ip", "-n", n[node], "addr", "add", f"{VIP}/32", "dev", "lo"])
            sh(nsx(n[node], "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1",
                   "net.ipv4.conf.all.arp_announce=2"))
        sh(["ip", "-n", n["lb"], "neigh", "replace", "198.18.2.2", "lladdr", MAC["be1"],
            "dev", "out1", "nud", "permanent"])
        sh(["ip", "-n", n["lb"], "neigh", "replace", "198.18.3.2", "lladdr", MAC["be2"],
            "dev", "out2", "nud", "permanent"])
        # the kernel-forwarded arms: the VIP lives behind be1
        sh(["ip", "-n", n["lb"], "route", "add", f"{VIP}/32", "via", "198.18.2.2"])
        self._lookup_ifindexes("lb", ("in0", "out1", "out2"))


def nginx_conf(tmp: str, workers: int) -> str:
    return f"""worker_processes {workers};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log crit;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  keepalive_timeout 0;
  limit_req_zone $binary_remote_addr zone=perclient:10m rate={RATE}r/s;
  limit_req_status 429;
  server {{
    listen {VIP}:80 reuseport backlog=4096;
    # a static file: `return` would answer in the rewrite phase, before limit_req runs
    location / {{ limit_req zone=perclient; root {tmp}/html; index index.html; }}
  }}
}}
"""


def start_nginx(ns: str, workers: int, tmpdir: str) -> subprocess.Popen:
    tmp = tempfile.mkdtemp(dir=tmpdir)
    os.chmod(tmpdir, 0o755)   # workers run as an unprivileged user and read html/
    os.chmod(tmp, 0o755)
    Path(tmp, "nginx.conf").write_text(nginx_conf(tmp, workers))
    Path(tmp, "html").mkdir()
    Path(tmp, "html", "index.html").write_text("ok\n")
    return subprocess.Popen(nsx(ns, "nginx", "-p", tmp, "-e", f"{tmp}/error.log",
                                "-c", f"{tmp}/nginx.conf"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def process_tree_cpu(root_pids: list[int]) -> float:
    """user+sys seconds of these processes and their children (nginx workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = set(root_pids)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) in root_pids:
                    pids.add(int(entry))
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def nginx_pids(procs: list[subprocess.Popen]) -> list[int]:
    """The nginx masters (children of `ip netns exec`, which execs: same pid)."""
    return [p.pid for p in procs]


def machine_busy() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_listening(ns: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = sh(nsx(ns, "ss", "-Hltn", "sport = :80"), check=False).stdout
        if out.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"nginx in {ns} is not listening")


# --- the client (runs inside the cli namespace) ---------------------------------
async def _client_main(addresses: list[str], conns: int, duration: float, warmup: float) -> dict:
    start = time.monotonic()
    end = start + duration
    per_addr = {a: [0, 0, 0] for a in addresses}   # ok (in window), limited, errors
    latencies: list[float] = []
    request = f"GET / HTTP/1.1\r\nHost: {VIP}\r\nConnection: close\r\n\r\n".encode()

    async def one(address: str) -> None:
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(VIP, 80, local_addr=(address, 0)), 3)
                writer.write(request)
                data = await asyncio.wait_for(reader.read(), 3)
                writer.close()
                status = int(data[9:12]) if data.startswith(b"HTTP/1.") else 0
            except (OSError, asyncio.TimeoutError, ValueError):
                status = 0
            t1 = time.monotonic()
            if t0 - start < warmup:
                continue
            if status == 200:
                per_addr[address][0] += 1
            elif status == 429:
                per_addr[address][1] += 1
            else:
                per_addr[address][2] += 1
                await asyncio.sleep(0.01)
                continue
            latencies.append((t1 - t0) * 1000)

    await asyncio.gather(*(one(a) for a in addresses for _ in range(conns)))
    return {"per_addr": per_addr, "latencies_ms": latencies}


def client(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addresses", required=True)
    parser.add_argument("--conns", type=int, default=4)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop
        uvloop.install()
    out = asyncio.run(_client_main(args.addresses.split(","), args.conns, args.duration,
                                   args.warmup))
    Path(args.out).write_text(json.dumps(out))   # a file: big results through a pipe got mangled
    return 0


def run_clients(net: Net, duration: float, warmup: float, procs: int, conns: int) -> dict:
    shards = [net.clients[i::procs] for i in range(procs)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    outs = [tempfile.mktemp(prefix="lbdb-client-", suffix=".json") for _ in shards]
    running = [subprocess.Popen(nsx(net.names["cli"], "timeout", str(int(duration + 30)),
                                    sys.executable, "-m", "bench.sharedmem", "client",
                                    "--addresses", ",".join(s), "--conns", str(conns),
                                    "--duration", str(duration), "--warmup", str(warmup),
                                    "--out", out),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=str(REPO), env=env)
               for s, out in zip(shards, outs)]
    per_addr: dict = {}
    latencies: list[float] = []
    try:
        for p, path in zip(running, outs):
            _, err = p.communicate(timeout=duration + 60)
            if p.returncode != 0:
                raise RuntimeError(f"client failed: {err.strip()[-500:]}")
            data = json.loads(Path(path).read_text())
            per_addr.update(data["per_addr"])
            latencies.extend(data["latencies_ms"])
    finally:
        for path in outs:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return {"per_addr": per_addr, "latencies_ms": latencies}


class Arms:
    def __init__(self, net: Net, tmpdir: str):
        from lbd.dataplane.maps import load_helper

        self.net, self.tmpdir = net, tmpdir
        self.pass_bpf, pass_fn = load_helper("lbd_pass")
        self.modes = {f"be{i}/eth0": net.attach(f"be{i}", "eth0", pass_fn.fd) for i in (1, 2)}
        self.dp = None
        self.cores = os.cpu_count() or 1

    def servers(self, arm: str) -> list[subprocess.Popen]:
        n = self.net.names
        if arm == "shared_memory":
            procs = [start_nginx(n["be1"], self.cores, self.tmpdir)]
            wait_listening(n["be1"])
        elif arm == "local_kernel_hash":
            procs = [start_nginx(n["be1"], 1, self.tmpdir) for _ in range(self.cores)]
            wait_listening(n["be1"])
        else:
            procs = [start_nginx(n[f"be{1 + i % 2}"], 1, self.tmpdir) for i in range(self.cores)]
            wait_listening(n["be1"])
            wait_listening(n["be2"])
        time.sleep(0.5)
        return procs

    def lbd_on(self) -> None:
        from lbd.dataplane.maps import Datapath
        from lbd.plan import BackendPlan, VipPlan
        from lbd.dataplane.programmer import Programmer

        if self.dp is None:
            self.dp = Datapath()
            members = tuple(BackendPlan(ipaddress.ip_address(f"198.18.{1 + k}.2"), 100,
                                        dst_mac=bytes.fromhex(MAC[f"be{k}"].replace(":", "")),
                                        src_mac=bytes.fromhex(MAC[f"out{k}"].replace(":", "")),
                                        ifindex=self.net.ifindex[f"out{k}"])
                            for k in range(1, min(self.cores, 2) + 1))
            Programmer(self.dp).apply([VipPlan(ipaddress.ip_address(VIP), 80, 6,
                                               client_affinity=True, backends=members,
                                               name="bench")])
        self.modes["lb/in0 lbd"] = self.net.attach("lb", "in0", self.dp.prog_fd)

    def lbd_off(self) -> None:
        self.net.attach("lb", "in0", -1)

    def close(self) -> None:
        for bpf in (self.pass_bpf, self.dp.bpf if self.dp else None):
            if bpf is not None:
                with contextlib.suppress(Exception):
                    bpf.cleanup()


def one_arm(arms: Arms, arm: str, duration: float, warmup: float, procs: int, conns: int) -> dict:
    servers = arms.servers(arm)
    try:
        if arm == "lbd_client_affinity":
            arms.lbd_on()
        cpu0 = process_tree_cpu(nginx_pids(servers))
        busy0 = machine_busy()
        t0 = time.monotonic()
        data = run_clients(arms.net, duration, warmup, procs, conns)
        elapsed = time.monotonic() - t0
        cpu = process_tree_cpu(nginx_pids(servers)) - cpu0
        busy = machine_busy() - busy0
    finally:
        if arm == "lbd_client_affinity":
            arms.lbd_off()
        stop_groups(servers)
    window = duration - warmup
    per_addr = data["per_addr"]
    ok = sum(v[0] for v in per_addr.values())
    limited = sum(v[1] for v in per_addr.values())
    errors = sum(v[2] for v in per_addr.values())
    answered = ok + limited
    ratios = [v[0] / window / RATE for v in per_addr.values()]
    lat = sorted(data["latencies_ms"])
    # CPU over the whole client run (warm-up included) per request answered in it:
    # scale the answered count by elapsed/window
    reqs_total = answered * elapsed / window if window > 0 else answered
    return {"rps": answered / window, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
            "cpu_us_per_req": 1e6 * cpu / max(reqs_total, 1),
            "cpu_total_us_per_req": 1e6 * busy / max(reqs_total, 1),
            "limit_ratio": statistics.mean(ratios),
            "limit_ratio_min": min(ratios), "limit_ratio_max": max(ratios),
            "ok": ok, "limited": limited, "errors": errors}


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def measure(runs: int, duration: float, warmup: float, clients: int, conns: int) -> dict:
    procs = 2
    per: dict[str, list[dict]] = {a: [] for a in ARMS}
    tmpdir = tempfile.mkdtemp(prefix="lbdb-sm-")
    try:
        with Net(clients) as net:
            arms = Arms(net, tmpdir)
            try:
                for r in range(runs):
                    for arm in ARMS:
                        res = one_arm(arms, arm, duration, warmup, procs, conns)
                        per[arm].append(res)
                        print(f"run {r + 1}/{runs} {arm:20} {res['rps']:8.0f} req/s "
                              f"p50 {res['p50_ms']:.2f} ms p99 {res['p99_ms']:.2f} ms "
                              f"limit x{res['limit_ratio']:.2f} cpu {res['cpu_us_per_req']:.0f} us",
                              flush=True)
                modes = dict(arms.modes)
                lbd_actions = arms.dp.global_counters()["actions"] if arms.dp else {}
            finally:
                arms.close()
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    result: dict = {"arms": {}, "runs": runs, "duration_s": duration, "warmup_s": warmup,
                    "rate_limit_rps_per_client": RATE, "client_addresses": clients,
                    "connections_per_address": conns, "client_processes": procs,
                    "workers": os.cpu_count(), "xdp_modes": modes, "lbd_actions": lbd_actions,
                    "client": "asyncio (uvloop) HTTP/1.1, Connection: close (a new connection "
                              "per request); wrk is not installed",
                    "topology": "cli -> lb -> be1/be2 (own namespaces); lb forwards by kernel "
                                "routing or by lbd XDP"}
    for arm, results in per.items():
        entry = {}
        for key in results[0]:
            values = [r[key] for r in results]
            entry[key] = round(statistics.median(values), 3)
            if key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "limit_ratio"):
                entry[f"{key}_spread"] = [round(min(values), 3), round(max(values), 3)]
        result["arms"][arm] = entry
    shm = result["arms"]["shared_memory"]
    for arm, entry in result["arms"].items():
        entry["rps_vs_shared_memory"] = round(entry["rps"] / shm["rps"], 3) if shm["rps"] else None
        entry["cpu_vs_shared_memory"] = (round(entry["cpu_us_per_req"] / shm["cpu_us_per_req"], 3)
                                         if shm["cpu_us_per_req"] else None)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        return client(argv[1:])
    args = arguments(__doc__, "sharedmem", "short runs: checks it runs").parse_args(argv)
    load_start = loadavg()
    if args.quick:
        result = measure(runs=1, duration=3.0, warmup=0.5, clients=32, conns=2)
    else:
        result = measure(runs=3, duration=12.0, warmup=2.0, clients=64, conns=4)
    save(result, args, "native", load_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
