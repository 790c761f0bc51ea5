"""Per-packet cost of the balancer through BPF_PROG_TEST_RUN, beside a trivial
XDP_PASS program measured the same way in the same run.

Every figure is per call (repeat=1) and the median over many calls: repeat
mode re-runs the program on the packet the previous run left behind, which
is wrong for every case that rewrites or encapsulates. Calls to the floor
and to every case are interleaved, so machine noise hits all alike, and each
case is reported as its ratio to the floor of the same run.
bench/notes/xdp_cost.md says how the timer works and where the time goes.

Cases (a realistic config: 40 VIPs, 100 backends in all), for dsr and ipip:
  nonvip                 a packet to no VIP: one prefilter bit, XDP_PASS
  <mode>_syn             a SYN of a new flow, a distinct 5-tuple every call:
                         a table miss, the Maglev pick, no entry made
  <mode>_first_ack       the handshake ACK of a flow whose SYN was forwarded
                         (sent before, untimed): the call that makes the entry
  <mode>_established     a packet of a known flow: a connection-table hit
  ipip_sc_established    the same on a second-chance VIP (issue #12): the flag,
                         a second table, an entry naming a second choice, so
                         each packet goes in GUE; reported beside
                         ipip_established as their ratio (second_chance)
  <mode>_syn_flood_established   established flows' packets while the TCP table
                         is full of flood entries (spoofed flows' ACKs, more
                         than the table holds, and more arriving beside every
                         timed packet). A second copy of the program, so the
                         other cases keep a table that is not full.
Diagnostics (no goal) locate the cost: the same SYN every call (warm memory),
one ACK again and again with its entry deleted before each call (an insert
into warm memory), an insert into the full table (evicting), and single map
operations on maps shaped like lbd's (bench/bpf/mapcost.c): an LRU insert,
a lookup miss in a full and in an empty table, a Maglev slot.

Both cores: two worker processes forked after the programs are loaded (so
they share the very same programs and maps), pinned to CPU 0 and CPU 1,
time new-flow inserts (first_ack, each worker its own flows) at the same time,
against each core alone; the floor and an established flow the same way, as
controls for what the machine itself does when both cores are busy, and
mapcost.c's inserts 128 a call (the two cores inserting most of the time).
Processes, not threads: ctypes releases the GIL during the call, but the
Python between calls would still take turns.

Comparisons, each right after today's program on the same kind of packet:
--before REV times the program of a git revision (its xdp/ from git),
--patch FILE today's program with a diff applied (bench/notes/*.patch);
bench.run passes both (issue #23: 6fecec1, main before its leaner encapsulation,
and bench/notes/ipip_adjust_head_only.patch, encapsulation cut to its helper
call) and either is skipped once it no longer loads or applies.

Writes bench/results/xdp_cost.json:
  {"floor_ns": N, "cases": {"<case>": {"ns", "ratio_to_floor", "spread_ns", "goal", "goal_met"}},
   "second_chance": {"ratio", "ratio_over_floor", "runs_ratio", "goal", "goal_met"},
   "diagnostics": {...}, "breakdown": {...}, "cores": {...}, "lru_global_lock": {...},
   "reference": {...}, "before": {...}, "checks": {...}, "machine": {...}}
"""
from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import ipaddress
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from bench.machine import arguments, loadavg, machine_info
from lbd.dataplane import bpfsys, settle
from lbd.dataplane.maps import BackendEntry, Datapath, Limits, load_helper
from lbd.plan import BackendPlan, VipPlan
from lbd.dataplane.programmer import Programmer
from lbd.testing import fibns

REPO = Path(__file__).resolve().parent.parent
ip = ipaddress.ip_address
CLIENT_MAC, OUR_MAC = "02:00:00:00:0c:01", fibns.MAC
MODES = ("dsr", "ipip")
VIP = {"dsr": ("198.18.100.5", 80), "ipip": ("198.18.101.5", 443)}        # new flows
ESTABLISHED = {"dsr": ("198.18.100.7", 80), "ipip": ("198.18.101.7", 443)}
SECOND_CHANCE_VIP = ("198.18.101.9", 443)   # an ipip VIP shaped like ESTABLISHED's (2 backends)
FLOOD_VIP = {"dsr": ("198.18.100.3", 80), "ipip": ("198.18.101.3", 443)}
# a dsr VIP whose slots are kept unsettled: its SYNs look their entries up
# (docs/design.md "What a SYN looks up"), as in a slot that moved
UNSETTLED_VIP = ("198.18.100.9", 80)
FLOOD_ESTABLISHED = 16   # established flows per mode in the full table, sent in turn
XDP_TX = 3

# Goals (issue #13, #23): a SYN within 3.6x the floor; established unchanged from
# before the SYN rule changed (1.8-2.2x); nonvip as before. Issue #23: an
# established ipip packet at most 2.0x. (low, high) ratio bands.
GOALS = {"nonvip": (None, 1.3), "dsr_syn": (None, 3.6), "ipip_syn": (None, 3.6),
         "dsr_established": (1.8, 2.2), "ipip_established": (None, 2.0)}
CORES_GOAL = 1.25        # both cores' per-insert cost within 1.25x of one core's
SECOND_CHANCE_GOAL = 1.10  # an established packet in GUE within 1.10x of one in plain ipip
# This benchmark's figures before the SYN rule changed (bench/results/xdp_cost.json
# of commit d637aa9, 2026-11-24; then a SYN made the entry, so *_new is a SYN
# that inserted).
BEFORE = {"source": "bench/results/xdp_cost.json at commit d637aa9 (2026-11-24), floor 151 ns",
          "ratio_to_floor": {"nonvip": 1.33, "dsr_new": 8.16, "dsr_established": 1.99,
                             "ipip_new": 8.50, "ipip_established": 2.52},
          "over_floor_ns": {"nonvip": 50, "dsr_new": 1081, "dsr_established": 149,
                            "ipip_new": 1132, "ipip_established": 230}}
# The side-by-side measurement of lbd and a public production XDP balancer
# (IPIP, Maglev, LRU connection table of 1M entries per CPU): another run, by
# another harness, on 2026-12-01. Only its ratios to its own floor are shown
# beside this run's ratios; its nanoseconds never stand beside ours.
REFERENCE = {
    "how": "side by side on 2026-12-01: lbd's program and a public production XDP balancer "
           "(IPIP encapsulation, Maglev ring, LRU connection table of 1M entries per CPU), "
           "BPF_PROG_TEST_RUN per call on identical packets, cases interleaved, three runs on "
           "a quiet machine; that run's XDP_PASS floor 80 ns. 'new flow' there was a distinct "
           "SYN every call, and both balancers then made the entry at the SYN (lbd no longer "
           "does: today's first_ack is the call that inserts)",
    "floor_ns": 80,
    "ns": {"peer": {"nonvip": [141, 150], "established": [240, 250], "new_flow": [561, 601]},
           "lbd_ipip": {"nonvip": [90, 100], "established": [171, 181], "new_flow": [551, 561]},
           "lbd_dsr": {"established": [141, 150], "new_flow": [521, 540]}},
}


def realistic_config() -> list[VipPlan]:
    """40 VIPs (20 dsr, 20 ipip), 100 backends in all."""
    plans = []
    our_mac = bytes.fromhex(OUR_MAC.replace(":", ""))
    for i in range(20):
        members = tuple(BackendPlan(ip(f"198.18.0.{10 + (i * 5 + j) % 200}"), 100, dst_mac=bytes([2, 0xbe, 0, 0, i, j]),
                                    src_mac=our_mac) for j in range(3 if i % 2 else 2))
        plans.append(VipPlan(ip(f"198.18.100.{i + 1}"), 80, 6, backends=members, name=f"dsr{i}"))
        remote = tuple(BackendPlan(ip(f"198.18.20.{10 + (i * 3 + j) % 200}"), 100) for j in range(3 if i % 2 else 2))
        plans.append(VipPlan(ip(f"198.18.101.{i + 1}"), 443, 6, ipip=True, backends=remote,
                             name=f"ipip{i}"))
    return plans


def packet(dst: str, src: str, sport: int, dport: int, flags="A") -> bytes:
    return bytes(Ether(src=CLIENT_MAC, dst=OUR_MAC) / IP(src=src, dst=dst) /
                 TCP(sport=sport, dport=dport, flags=flags) / (b"x" * 10))


SRC_AT, SPORT_AT, FLAGS_AT = 14 + 12, 14 + 20, 14 + 20 + 13
SYN, ACK = 0x02, 0x10


class Flows:
    """Distinct client 5-tuples, never repeated within a process: flow n has
    source 198.19.(n>>8).(n&255) and source port 1024 + (n>>16). Frames are one
    scapy packet with the source patched (the program reads no L4 checksum;
    scapy per packet took most of the benchmark's run time)."""

    def __init__(self):
        self.next = 0

    def take(self, count: int) -> range:
        ids = range(self.next, self.next + count)
        self.next += count
        return ids

    @staticmethod
    def frames(ids: range, dst: str, dport: int, flags: int) -> list[bytes]:
        template = bytearray(packet(dst, "198.19.0.0", 1024, dport, "S"))
        template[FLAGS_AT] = flags
        out = []
        for n in ids:
            template[SRC_AT + 2] = (n >> 8) & 0xff
            template[SRC_AT + 3] = n & 0xff
            template[SPORT_AT:SPORT_AT + 2] = (1024 + (n >> 16)).to_bytes(2, "big")
            out.append(bytes(template))
        return out


class Runner:
    """BPF_PROG_TEST_RUN, one call per packet. `lean`: buffers made once, so
    two cores overlap their program runs more of the time (the both-cores
    measurement). Otherwise fresh buffers every call, as lbd.dataplane.bpfsys.test_run
    does and as this benchmark measured before: the floor reads ~10 ns lower
    in the lean loop (the timer's own path stays warmer), so ratios taken one
    way are not compared with ratios taken the other."""

    def __init__(self, ifindex: int, lean: bool = True, size: int = 512):
        self.ifindex, self.lean = ifindex, lean
        self.data_in = ctypes.create_string_buffer(size)
        self.data_out = ctypes.create_string_buffer(size + 512)   # room for encapsulation
        self.md = bpfsys._XdpMd(ingress_ifindex=ifindex)
        self.opts = bpfsys._TestRunOpts(
            sz=ctypes.sizeof(bpfsys._TestRunOpts), data_in=ctypes.addressof(self.data_in),
            data_out=ctypes.addressof(self.data_out), ctx_in=ctypes.addressof(self.md),
            ctx_size_in=ctypes.sizeof(self.md), repeat=1)
        self._ref = ctypes.byref(self.opts)
        self._fn = bpfsys._libbpf.bpf_prog_test_run_opts
        self._last: bpfsys.TestRun | None = None

    def __call__(self, fd: int, frame: bytes) -> int:
        """Run once; the program's own time in ns (the kernel's timer)."""
        if not self.lean:
            self._last = bpfsys.test_run(fd, frame, self.ifindex)
            return self._last.duration_ns
        n = len(frame)
        ctypes.memmove(self.data_in, frame, n)
        opts = self.opts
        opts.data_size_in = n
        opts.data_size_out = len(self.data_out)
        self.md.data_end = n
        if self._fn(fd, self._ref) < 0:
            err = ctypes.get_errno()
            raise bpfsys.BpfError(err, f"BPF_PROG_TEST_RUN: {os.strerror(err)}")
        return opts.duration

    @property
    def action(self) -> int:
        return self._last.action if not self.lean else self.opts.retval

    def outer_protocol(self) -> int:
        """The IPv4 protocol of the last output frame (4 ipip, 17 GUE)."""
        out = self._last.packet if not self.lean else self.data_out.raw[:self.opts.data_size_out]
        return out[14 + 9]

    def destination(self) -> bytes:
        """Where the last packet went: dsr's destination MAC and ipip's outer
        destination address (the backend either way)."""
        out = self._last.packet if not self.lean else self.data_out.raw[:self.opts.data_size_out]
        return out[0:6] + out[30:34]


def count_entries(table, chunk: int = 65536) -> int:
    """Entries in a bcc hash table, by BPF_MAP_LOOKUP_BATCH (key and value
    sizes from the table's own types: the kernel writes whole values)."""
    map_fd, key_size, value_size = table.map_fd, ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf)
    lib = bpfsys._libbpf
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    token = ctypes.create_string_buffer(8)
    total, first = 0, True
    while True:
        n = ctypes.c_uint32(chunk)
        rc = lib.bpf_map_lookup_batch(map_fd, None if first else token, token, keys, values,
                                      ctypes.byref(n), None)
        err = ctypes.get_errno() if rc < 0 else 0
        total += n.value
        first = False
        if rc < 0:
            if err == errno.ENOENT:
                return total
            raise bpfsys.BpfError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")


def load(limits: Limits | None = None) -> Datapath:
    """lbd's program with the realistic config applied, one VIP with second chance."""
    dp = Datapath(limits or Limits())
    dp.set_settings(ip(fibns.V4), ip(fibns.V6))
    programmer = Programmer(dp)
    programmer.apply(realistic_config())
    give_second_chance(dp, programmer, SECOND_CHANCE_VIP)
    return dp


def give_second_chance(dp: Datapath, programmer: Programmer, vip: tuple[str, int]) -> None:
    """Turn one ipip VIP of the config into a second-chance VIP by hand, with
    the datapath's own API (whatever the control plane would compute): the flag
    in its VIP and backend entries, every backend a second choice for ever, and
    a second table naming, in each slot, another backend than the first."""
    from lbd.dataplane import layout

    flag, forever = layout.constant("LBD_VIP_SECOND_CHANCE"), layout.constant("LBD_SECOND_FOREVER")
    key = (ip(vip[0]), vip[1], 6)
    applied = programmer.applied()[key]
    flags = applied.plan.flags | flag
    dp.set_vip(*key, applied.vip_id, flags)
    for address, backend_id in applied.backend_ids.items():
        old = dp.backend(backend_id)
        dp.set_backend(backend_id, BackendEntry(applied.vip_id, address, state=old.state,
                                                generation=old.generation, vip_flags=flags,
                                                second_until=forever))
    ids = sorted(applied.backend_ids.values())
    first = np.asarray(applied.table, dtype=np.uint32)
    second = np.asarray(ids, dtype=np.uint32)[(np.searchsorted(ids, first) + 1) % len(ids)]
    dp.write_second_rings({applied.vip_id: second})


# Maps today's Datapath opens that an older program may lack, declared for it
# (unused by its code; the QUIC maps with stand-in types of their own: the old
# header has no QUIC structs, and nothing reads them in a comparison).
MAPS_TODAY_EXPECTS = (
    ("conntrack_udp", 'LBD_MAP("lru_hash", struct lbd_flow_key, struct lbd_flow_entry, conntrack_udp, 1024, 0);'),
    ("second_rings", 'LBD_MAP("array_of_maps$ring_template", int, int, second_rings, LBD_MAX_VIPS, 0);'),
    ("quic_configs", 'LBD_MAP("array", u32, u32, quic_configs, LBD_MAX_VIPS, 0);'),
    ("quic_servers", 'LBD_MAP("hash", u64, u32, quic_servers, LBD_MAX_BACKENDS, BPF_F_NO_PREALLOC);'),
    ("quic_stats", 'LBD_MAP("percpu_array", u32, u64, quic_stats, 1, 0);'),
    ("quic_routed", 'LBD_MAP("percpu_array", u32, u64, quic_routed, LBD_MAX_BACKENDS, 0);'),
    ("quic_prefilter", 'LBD_MAP("array", u32, u64, quic_prefilter, LBD_PREFILTER_WORDS, 0);'),
    ("quic_sid_slots", 'LBD_MAP("array", u32, u64, quic_sid_slots, 1, 0);'),
    ("syn_settled", 'LBD_MAP("percpu_array", u32, u64, syn_settled, 1, 0);'),
)


def xdp_tree(rev: str | None, workdir: str) -> Path | None:
    """The xdp/ sources to build: the working tree's (rev None), or git
    revision `rev`'s written to `workdir` (None if git cannot give them: not
    a checkout, or a shallow one). An old revision lacking a map today's
    Datapath expects (MAPS_TODAY_EXPECTS) gets it declared, unused by its code."""
    import subprocess

    from lbd.dataplane import layout

    if rev is None:
        return layout.XDP_DIR
    listed = subprocess.run(["git", "ls-tree", "--name-only", rev, "xdp/"], cwd=REPO,
                            capture_output=True, text=True)
    if listed.returncode != 0 or not listed.stdout.split():
        return None
    target = Path(workdir, "xdp")
    target.mkdir(parents=True)
    for name in listed.stdout.split():
        text = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout
        if name.endswith("maps.h"):
            for map_name, declaration in MAPS_TODAY_EXPECTS:
                if map_name not in text:
                    text = text.replace("#endif /* LBD_MAPS_H */", f"{declaration}\n#endif /* LBD_MAPS_H */")
        (target / Path(name).name).write_text(text)
    return target


def patched_tree(source: Path, patch: str, workdir: str) -> Path | None:
    """A copy of `source` (an xdp/ directory) in `workdir` with `patch` (a diff
    of xdp/ files, -p1) applied; None if it does not apply (any more)."""
    import shutil
    import subprocess

    target = Path(workdir, "xdp")
    shutil.copytree(source, target)
    try:
        done = subprocess.run(["patch", "--batch", "--forward", "-s", "-p1", "-i",
                               str(Path(patch).resolve())], cwd=workdir, capture_output=True,
                              text=True)
    except FileNotFoundError:   # no patch(1) on this machine
        return None
    return target if done.returncode == 0 else None


@contextlib.contextmanager
def building_from(xdp_dir: Path):
    """Programs loaded inside are built from the sources in `xdp_dir` (an
    xdp_tree() or patched_tree()), not the working tree's."""
    from lbd.dataplane import layout

    saved = layout.XDP_DIR
    layout.XDP_DIR = Path(xdp_dir)
    try:
        yield
    finally:
        layout.XDP_DIR = saved


def load_from(xdp_dir: Path | None, limits: Limits | None = None) -> Datapath | None:
    """load() with lbd's program built from the sources in `xdp_dir`."""
    if xdp_dir is None:
        return None
    with building_from(xdp_dir):
        return load(limits)


def program_source(rev: str | None) -> dict:
    """What "today's program" was built from, for the results."""
    import subprocess

    def git(*args):
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    if rev:
        return {"xdp_from": f"git revision {rev}", "commit": git("rev-parse", rev)}
    return {"xdp_from": "the working tree", "commit": git("rev-parse", "HEAD"),
            "xdp_uncommitted_changes": bool(git("status", "--porcelain", "xdp/"))}


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def slowest_median(values, share: float = 1 / 128) -> float:
    """Median of the slowest `share` of calls. For an insert, one call in 128
    refills the CPU's free list under the LRU's global lock: this is that call."""
    ordered = sorted(values)
    tail = ordered[int(len(ordered) * (1 - share)):]
    return float(tail[len(tail) // 2]) if tail else 0.0


def trimmed_mean(values, keep: float = 0.999) -> float:
    """Mean of the calls below the `keep` quantile: it counts the occasional dear
    call (an LRU refill every 128 inserts per CPU) that a median hides, without
    the odd preempted call of a shared machine."""
    ordered = sorted(values)
    kept = ordered[:max(1, int(keep * len(ordered)))]
    return sum(kept) / len(kept)


class MapCost:
    """bench/bpf/mapcost.c: single kernel map operations on maps shaped like
    lbd's, N per call; both LRU tables filled past full first (as a busy
    connection table is), from both CPUs (a per-CPU-lists LRU has one list per CPU)."""

    FUNCTIONS = ("nothing", "lru_insert", "lru_percpu_insert", "lru_lookup_miss",
                 "lru_lookup_empty", "lru_lookup_empty_64k", "ring_slot")

    def __init__(self, size: int):
        from bcc import BPF

        self.size = size
        self.bpf = BPF(src_file=str(Path(__file__).resolve().parent / "bpf" / "mapcost.c").encode(),
                       cflags=[f"-DMAPCOST_SIZE={size}"])
        self.fd = {n: self.bpf.load_func(n.encode(), BPF.XDP).fd for n in self.FUNCTIONS}
        bpfsys.update_u32(self.bpf[b"rings"].map_fd, 0, self.bpf[b"ring_inner"].map_fd)

    @staticmethod
    def frame(ops: int) -> bytes:
        return bytes([ops]) + bytes(63)

    def fill_jobs(self) -> list[tuple]:
        """Per CPU: 128 inserts a call into both tables, to 110% of their size."""
        per_cpu = int(self.size * 1.1) // 2 // 128 + 1
        return [(self.fd["lru_insert"], self.frame(128), per_cpu),
                (self.fd["lru_percpu_insert"], self.frame(128), per_cpu)]

    def entries(self) -> dict:
        return {n: count_entries(self.bpf[n.encode()]) for n in ("common_lru", "percpu_lru")}


class Workers:
    """Two processes forked after every program is loaded (so they see the same
    programs and maps through the inherited descriptors), pinned to CPU 0 and
    CPU 1. Processes, not threads: ctypes releases the GIL during the call,
    but the Python between calls would take turns."""

    def __init__(self, ifindex: int, cpus=(0, 1)):
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.cpus, self.procs, self.conns = cpus, [], []
        for cpu in cpus:
            parent, child = ctx.Pipe()
            # the child closes its copies of the parent's ends (its own and the
            # earlier workers'), so each worker sees EOF when the parent dies
            proc = ctx.Process(target=_worker, args=(child, cpu, ifindex, [*self.conns, parent]),
                               daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)

    def prepare(self, cpu: int, fd: int, frames: list[bytes], pre: list[tuple] = ()):
        """`pre`: untimed (fd, frame, count) runs first (each flow's SYN, a fill)."""
        self.conns[cpu].send(("prepare", fd, frames, list(pre)))

    def ready(self, cpu: int) -> None:
        if self.conns[cpu].recv() != "ready":
            raise RuntimeError(f"worker on CPU {cpu} failed")

    def go(self, cpus) -> dict:
        for cpu in cpus:
            self.conns[cpu].send(("go",))
        out = {}
        for cpu in cpus:
            seen, d, s, e = self.conns[cpu].recv()
            if seen != cpu:
                raise RuntimeError(f"the worker pinned to CPU {cpu} ran on CPU {seen}")
            out[cpu] = (array.array("I", d), array.array("q", s), array.array("q", e))
        return out

    def close(self) -> None:
        for proc, conn in zip(self.procs, self.conns):
            try:
                conn.send(("exit",))
            except OSError:
                pass
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


def _cpu_now() -> int:
    with open("/proc/self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])


def _worker(conn, cpu: int, ifindex: int, inherited=()) -> None:
    """Commands: ("prepare", fd, frames, pre) -> "ready"; ("go",) -> (the CPU
    it ran on, durations, call starts, call ends); ("exit",). Ends when the
    parent goes away (EOF)."""
    for other in inherited:
        other.close()
    try:
        os.sched_setaffinity(0, {cpu})
        run = Runner(ifindex, lean=True)
        clock = time.perf_counter_ns
        job = None
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                break
            if msg[0] == "exit":
                break
            if msg[0] == "prepare":
                _, fd, frames, pre = msg
                for pre_fd, pre_frames, count in pre:
                    if isinstance(pre_frames, bytes):
                        pre_frames = [pre_frames] * count
                    for frame in pre_frames:
                        run(pre_fd, frame)
                job = (fd, frames)
                conn.send("ready")
            elif msg[0] == "go":
                fd, frames = job
                durations, starts, ends = array.array("I"), array.array("q"), array.array("q")
                for frame in frames:
                    t0 = clock()
                    durations.append(run(fd, frame))
                    ends.append(clock())
                    starts.append(t0)
                conn.send((_cpu_now(), durations.tobytes(), starts.tobytes(), ends.tobytes()))
    finally:
        conn.close()
        os._exit(0)


# --- one core: every case interleaved ----------------------------------------------------
def measure(calls: int, runs: int, quick: bool, before_rev: str | None = None,
            patch: str | None = None, program_rev: str | None = None) -> dict:
    import tempfile

    load_start = loadavg()
    flows = Flows()
    two_cores = (os.cpu_count() or 1) >= 2
    with fibns.fib_namespace(f"lbdt-cost-{os.getpid()}") as ifindex, \
            tempfile.TemporaryDirectory(prefix="lbd-xdp-") as work:
        floor_bpf, floor_fn = load_helper("lbd_pass")
        floor_fd = floor_fn.fd
        source = program_source(program_rev)
        today = xdp_tree(program_rev, os.path.join(work, "today"))
        if today is None:
            raise SystemExit(f"--program {program_rev}: git cannot give its xdp/")
        dp = load_from(today)
        flood_size = 16384 if quick else Limits().conntrack_size
        dp_flood = load_from(today, Limits(conntrack_size=flood_size))
        mapcost = MapCost(flood_size)
        dp_before = load_from(xdp_tree(before_rev, os.path.join(work, "before"))) \
            if before_rev else None
        dp_patched = load_from(patched_tree(today, patch, os.path.join(work, "patched"))) \
            if patch else None
        workers = Workers(ifindex) if two_cores else None
        try:
            result = _measure(calls, runs, quick, flows, ifindex, floor_fd, dp, dp_flood,
                              mapcost, workers, dp_before, dp_patched)
        finally:
            if workers:
                workers.close()
        floor_bpf.cleanup()
    result["program"] = source
    if before_rev:
        result["before_program"] = {"rev": before_rev, "loaded": dp_before is not None}
    if patch:
        result["patched_program"] = {"patch": patch, "applied": dp_patched is not None}
    result["machine"] = machine_info(xdp_mode="test_run", load_start=load_start)
    return result


def _measure(calls, runs, quick, flows, ifindex, floor_fd, dp, dp_flood, mapcost,
             workers, dp_before=None, dp_patched=None) -> dict:
    run = Runner(ifindex, lean=False)   # as this benchmark measured before
    # the map-cost tables past full, from both CPUs at once (or from here)
    t0 = time.monotonic()
    if workers:
        for cpu in (0, 1):
            workers.prepare(cpu, floor_fd, [], mapcost.fill_jobs())
        for cpu in (0, 1):
            workers.ready(cpu)
    else:
        for fd, frame, count in mapcost.fill_jobs():
            for _ in range(2 * count):
                run(fd, frame)

    established = {m: packet(ESTABLISHED[m][0], "198.18.40.1", 40000, ESTABLISHED[m][1])
                   for m in MODES}
    for frame in established.values():            # place the flows once
        for program in (dp, dp_before, dp_patched):
            if program:
                run(program.prog_fd, frame)
                assert run.action == XDP_TX
    sc_established = packet(SECOND_CHANCE_VIP[0], "198.18.40.1", 40000, SECOND_CHANCE_VIP[1])
    run(dp.prog_fd, sc_established)               # its entry names a second choice
    assert run.action == XDP_TX and run.outer_protocol() == 17, "second chance: not GUE"
    nonvip = packet("198.18.200.1", "198.18.40.1", 40000, 80)
    # a warm table: many other flows' entries in it (ACKs: a SYN makes none)
    for frame in Flows.frames(flows.take(5000), "198.18.100.3", 80, ACK):
        run(dp.prog_fd, frame)
    # the daemon's settle walk, as it runs every 10 s: every slot settles (the
    # entries above agree with the table); UNSETTLED_VIP's are cleared again
    walk = settle.settle(dp)
    with dp.settle_lock:
        settle.clear(dp, [dp.vip_ids()[(ip(UNSETTLED_VIP[0]), UNSETTLED_VIP[1], 6)]])

    # The full table: more flood ACKs than it holds, spoofed flows to a dsr and
    # an ipip VIP, then the established flows (each one ACK, evicting a flood entry).
    fast = Runner(ifindex, lean=True)
    fill = int(dp_flood.limits.conntrack_size * 1.1)
    for m in MODES:
        dst, dport = FLOOD_VIP[m]
        for start in range(0, fill // 2, 65536):
            for frame in Flows.frames(flows.take(min(65536, fill // 2 - start)), dst, dport, ACK):
                fast(dp_flood.prog_fd, frame)
    flood_established = {m: [packet(ESTABLISHED[m][0], f"198.18.41.{k + 1}", 40000,
                                    ESTABLISHED[m][1]) for k in range(FLOOD_ESTABLISHED)]
                         for m in MODES}
    for frames in flood_established.values():
        for frame in frames:
            run(dp_flood.prog_fd, frame)
    fill_s = time.monotonic() - t0
    flood_entries_before = count_entries(dp_flood.conntrack)
    mapcost_entries = mapcost.entries()

    # the diagnostics' fixed packets
    syn_again = packet(VIP["dsr"][0], "198.18.50.1", 50000, VIP["dsr"][1], "S")
    ack_again = packet(VIP["dsr"][0], "198.18.50.2", 50000, VIP["dsr"][1], "A")
    ack_key = dp.flow_key(ip("198.18.50.2"), ip(VIP["dsr"][0]), 50000, VIP["dsr"][1], 6)
    del_fn = bpfsys._libbpf.bpf_map_delete_elem
    ct_fd, ack_key_ref = dp.conntrack.map_fd, ctypes.byref(ack_key)
    one_op = MapCost.frame(1)
    ops = {f"op_{n}": mapcost.fd[n] for n in MapCost.FUNCTIONS}

    names = ["floor", "nonvip"]
    for m in MODES:
        names += [f"{m}_syn", f"{m}_first_ack", f"{m}_established", f"{m}_syn_flood_established"]
    names.append("ipip_sc_established")
    diag_names = ["dsr_syn_same", "dsr_syn_unsettled", "dsr_first_ack_warm", "first_ack_full_table", *ops]
    if dp_before:
        diag_names += ["before_nonvip", "before_dsr_established", "before_ipip_established",
                       "before_dsr_syn"]
    if dp_patched:
        diag_names += ["patched_nonvip", "patched_dsr_established", "patched_ipip_established",
                       "patched_dsr_syn", "patched_dsr_first_ack"]
    per_run: dict[str, list[float]] = {n: [] for n in names + diag_names}
    means: dict[str, list[float]] = {n: [] for n in names + diag_names}
    tails: dict[str, list[float]] = {n: [] for n in names + diag_names}
    same_backend = [0, 0]     # first_ack went where its SYN went: [checked, agreed]
    for r in range(runs):
        syn = {m: Flows.frames(flows.take(calls), *VIP[m], SYN) for m in MODES}
        unsettled_syn = Flows.frames(flows.take(calls), *UNSETTLED_VIP, SYN)
        pairs = {m: flows.take(calls) for m in MODES}
        pre_syn = {m: Flows.frames(pairs[m], *VIP[m], SYN) for m in MODES}
        first_ack = {m: Flows.frames(pairs[m], *VIP[m], ACK) for m in MODES}
        flood_more = Flows.frames(flows.take(calls), *FLOOD_VIP["dsr"], ACK)
        before_syn = Flows.frames(flows.take(calls), *VIP["dsr"], SYN) if dp_before else None
        if dp_patched:
            patched_syn = Flows.frames(flows.take(calls), *VIP["dsr"], SYN)
            ids = flows.take(calls)
            patched_ack = Flows.frames(ids, *VIP["dsr"], ACK)
            for frame in Flows.frames(ids, *VIP["dsr"], SYN):
                run(dp_patched.prog_fd, frame)
        # each flow's SYN, forwarded (making no entry) before its ACK is timed
        syn_dest = {}
        for m in MODES:
            for i, frame in enumerate(pre_syn[m]):
                run(dp.prog_fd, frame)
                assert run.action == XDP_TX
                if i % 97 == 0:
                    syn_dest[(m, i)] = run.destination()
        before, flood_before = counters(dp), dp_flood.global_counters()
        s: dict[str, array.array] = {n: array.array("I") for n in per_run}
        # Each program compared with today's (--before, --patch) runs right after
        # today's on the same kind of packet, in the same cache state.
        before_fd = dp_before.prog_fd if dp_before else None
        patched_fd = dp_patched.prog_fd if dp_patched else None
        for i in range(calls):
            s["floor"].append(run(floor_fd, nonvip))
            s["nonvip"].append(run(dp.prog_fd, nonvip))
            if before_fd:
                s["before_nonvip"].append(run(before_fd, nonvip))
            if patched_fd:
                s["patched_nonvip"].append(run(patched_fd, nonvip))
            for m in MODES:
                s[f"{m}_syn"].append(run(dp.prog_fd, syn[m][i]))
                if m == "dsr" and before_fd:
                    s["before_dsr_syn"].append(run(before_fd, before_syn[i]))
                if m == "dsr" and patched_fd:
                    s["patched_dsr_syn"].append(run(patched_fd, patched_syn[i]))
                s[f"{m}_first_ack"].append(run(dp.prog_fd, first_ack[m][i]))
                if i % 97 == 0:
                    same_backend[0] += 1
                    same_backend[1] += run.destination() == syn_dest[(m, i)]
                if m == "dsr" and patched_fd:
                    s["patched_dsr_first_ack"].append(run(patched_fd, patched_ack[i]))
                # beside the plain one, in turn before and after it: whichever runs
                # second finds more of the program warm (measured: ~4% either way)
                if m == "ipip" and i % 2:
                    s["ipip_sc_established"].append(run(dp.prog_fd, sc_established))
                s[f"{m}_established"].append(run(dp.prog_fd, established[m]))
                if m == "ipip" and not i % 2:
                    s["ipip_sc_established"].append(run(dp.prog_fd, sc_established))
                if before_fd:
                    s[f"before_{m}_established"].append(run(before_fd, established[m]))
                if patched_fd:
                    s[f"patched_{m}_established"].append(run(patched_fd, established[m]))
                s[f"{m}_syn_flood_established"].append(
                    run(dp_flood.prog_fd, flood_established[m][i % FLOOD_ESTABLISHED]))
            # the flood goes on: one more spoofed flow's ACK into the full table
            s["first_ack_full_table"].append(run(dp_flood.prog_fd, flood_more[i]))
            s["dsr_syn_same"].append(run(dp.prog_fd, syn_again))
            s["dsr_syn_unsettled"].append(run(dp.prog_fd, unsettled_syn[i]))
            del_fn(ct_fd, ack_key_ref)                      # untimed
            s["dsr_first_ack_warm"].append(run(dp.prog_fd, ack_again))
            for name, fd in ops.items():
                s[name].append(run(fd, one_op))
        check_counts(before, counters(dp), flood_before, dp_flood.global_counters(), calls)
        for name, values in s.items():
            per_run[name].append(statistics.median(values))
            means[name].append(trimmed_mean(values))
            tails[name].append(slowest_median(values))
    flood_entries_after = count_entries(dp_flood.conntrack)
    if same_backend[0] != same_backend[1]:
        raise RuntimeError(f"first ACKs went elsewhere than their SYN: {same_backend}")

    floor = statistics.median(per_run["floor"])
    result = {"floor_ns": round(floor, 1), "cases": {}, "runs": runs, "calls_per_run": calls,
              "method": "BPF_PROG_TEST_RUN per call (repeat=1), fresh buffers per call as "
                        "lbd.dataplane.bpfsys.test_run makes them; every case and the floor interleaved "
                        "call by call; median per run, median of runs",
              "quick": quick, "before": BEFORE, "reference": REFERENCE,
              "floor_spread_ns": [round(min(per_run["floor"]), 1), round(max(per_run["floor"]), 1)],
              "checks": {
                  "counters": "per run: every syn a miss with no entry made, every first_ack "
                              "a miss that made one, every established packet a hit; in the "
                              "full table every established packet a hit (none evicted by the "
                              "flood) and every flood ACK an insert",
                  "first_ack_same_backend_as_syn": f"{same_backend[1]} of {same_backend[0]} "
                                                   "sampled flows",
                  "flood_table_entries": dp_flood.limits.conntrack_size,
                  "flood_entries_before_after": [flood_entries_before, flood_entries_after],
                  "mapcost_entries": mapcost_entries, "fill_s": round(fill_s, 1)}}

    def figure(name):
        ns = statistics.median(per_run[name])
        return {"ns": round(ns, 1), "ratio_to_floor": round(ns / floor, 3),
                "over_floor_ns": round(ns - floor, 1),
                "spread_ns": [round(min(per_run[name]), 1), round(max(per_run[name]), 1)],
                "runs_ns": [round(v, 1) for v in per_run[name]],
                "mean_ns": round(statistics.median(means[name]), 1),
                "slowest_1_128_ns": round(statistics.median(tails[name]), 1)}

    for name in names[1:]:
        case = figure(name)
        low, high = GOALS.get(name, (None, None))
        if high is not None:
            case["goal"] = f"{low}–{high}x" if low else f"<= {high}x"
            case["goal_met"] = (low is None or case["ratio_to_floor"] >= low) and \
                case["ratio_to_floor"] <= high
        else:
            case["goal"], case["goal_met"] = None, None
        result["cases"][name] = case
    result["diagnostics"] = {name: figure(name) for name in diag_names}
    result["diagnostics_what"] = {
        "dsr_syn_same": "one SYN again and again: dsr_syn with every line warm",
        "dsr_syn_unsettled": "dsr_syn to a VIP whose slots are unsettled: the SYN looks its entry up",
        "before_nonvip": "nonvip on the --before program (bench.run: 6fecec1, main before "
                         "issue #23's leaner encapsulation and settled slots)",
        "before_dsr_established": "dsr_established on that program",
        "before_ipip_established": "ipip_established on that program",
        "before_dsr_syn": "dsr_syn on that program",
        "patched_nonvip": "nonvip on today's program with the --patch applied",
        "patched_dsr_established": "dsr_established on the patched program",
        "patched_ipip_established": "ipip_established on the patched program",
        "patched_dsr_syn": "dsr_syn on the patched program",
        "patched_dsr_first_ack": "dsr_first_ack on the patched program",
        "dsr_first_ack_warm": "one ACK again and again, its entry deleted before each call "
                              "(untimed): an insert into warm memory (the element just freed)",
        "first_ack_full_table": "a spoofed flow's ACK into the full table (the flood itself): "
                                "an insert that evicts",
        "op_nothing": "mapcost.c's baseline: what every one of its functions does around "
                      "its operation",
        "op_lru_insert": "mapcost.c: one insert of a new key into a full LRU hash (common "
                         "lists), nothing else",
        "op_lru_percpu_insert": "mapcost.c: the same into a full LRU hash with per-CPU lists",
        "op_lru_lookup_miss": "mapcost.c: one lookup of a key the full table does not hold",
        "op_lru_lookup_empty": "mapcost.c: one lookup in an empty table of the same size (the "
                               "bucket alone)",
        "op_lru_lookup_empty_64k": "mapcost.c: one lookup in an empty 65,536-entry table "
                                   "(1 MiB of buckets instead of 16 MiB)",
        "op_ring_slot": "mapcost.c: one pseudo-random slot of a 65,537-entry array through an "
                        "array of maps (a Maglev pick)",
    }
    result["second_chance"] = second_chance_ratio(per_run, floor)
    result["breakdown"] = breakdown(result)
    result["lru_global_lock"] = lru_lock_model(result)
    result["cores"] = measure_cores(workers, dp, dp_flood, mapcost, floor_fd, flows,
                                    nonvip, calls, runs) if workers else None
    return result


def second_chance_ratio(per_run: dict, floor: float) -> dict:
    """ipip_sc_established against ipip_established: the ratio of the medians
    (the goal's figure), each run's ratio, and the ratio of the nanoseconds
    over the floor (the program's own share, without the timer's)."""
    sc, plain = statistics.median(per_run["ipip_sc_established"]), \
        statistics.median(per_run["ipip_established"])
    ratio = sc / plain
    return {"what": "an established packet of a second-chance VIP (GUE naming a second choice) "
                    "against one of a plain ipip VIP, same run, interleaved call by call",
            "ratio": round(ratio, 3),
            "ratio_over_floor": round((sc - floor) / (plain - floor), 3) if plain > floor else None,
            "runs_ratio": [round(a / b, 3) for a, b in zip(per_run["ipip_sc_established"],
                                                           per_run["ipip_established"])],
            "extra_ns": round(sc - plain, 1),
            "goal": f"<= {SECOND_CHANCE_GOAL}x ipip_established",
            "goal_met": ratio <= SECOND_CHANCE_GOAL}


def counters(dp: Datapath) -> dict:
    return {**dp.global_counters(), "syns_without_lookup": dp.syns_without_lookup()}


def check_counts(before: dict, after: dict, flood_before: dict, flood_after: dict, calls: int):
    """Every syn was a miss that made no entry (a settled slot's without a
    lookup, the unsettled VIP's with one), every first_ack a miss that made
    one, every established packet a hit; in the full table, every established
    packet a hit (the flood evicted none of them) and every flood ACK an insert;
    every second-chance packet went in GUE."""
    d = {k: after[k] - before[k] for k in ("ct_hits", "ct_misses", "ct_inserts_tcp",
                                           "stateless_forwards", "second_choice_carried",
                                           "syns_without_lookup")}
    n = len(MODES) * calls
    # + the warm diagnostics: dsr_syn_same (a miss, stateless, settled), dsr_syn_unsettled
    # (a miss, stateless, looked up), dsr_first_ack_warm (miss, insert);
    # + ipip_sc_established: a hit that carries its second choice
    want = {"ct_hits": n + calls, "ct_misses": 2 * n + 3 * calls, "ct_inserts_tcp": n + calls,
            "stateless_forwards": n + 2 * calls, "second_choice_carried": calls,
            "syns_without_lookup": n + calls}
    if d != want:
        raise RuntimeError(f"connection-table counters {d}, expected {want}")
    fd = {k: flood_after[k] - flood_before[k] for k in ("ct_hits", "ct_misses", "ct_inserts_tcp")}
    fwant = {"ct_hits": n, "ct_misses": calls, "ct_inserts_tcp": calls}
    if fd != fwant:
        raise RuntimeError(f"full table's counters {fd}, expected {fwant}: an established flow "
                           "was evicted by the flood?")


def breakdown(result: dict) -> dict:
    """Where a case's time goes, as differences between figures of the same run."""
    c, g = result["cases"], result["diagnostics"]
    floor = {"ns": result["floor_ns"]}

    def diff(a, b):
        return round(a["ns"] - b["ns"], 1)

    out = {
        "nonvip_over_floor": diff(c["nonvip"], floor),
        "dsr_syn_over_nonvip": diff(c["dsr_syn"], c["nonvip"]),
        "dsr_syn_warm_over_nonvip": diff(g["dsr_syn_same"], c["nonvip"]),
        "dsr_syn_cold_over_warm": diff(c["dsr_syn"], g["dsr_syn_same"]),
        "ipip_syn_over_dsr_syn": diff(c["ipip_syn"], c["dsr_syn"]),
        "dsr_insert": diff(c["dsr_first_ack"], c["dsr_syn"]),
        "ipip_insert": diff(c["ipip_first_ack"], c["ipip_syn"]),
        "dsr_insert_warm": diff(g["dsr_first_ack_warm"], g["dsr_syn_same"]),
        "insert_full_table_over_dsr_first_ack": diff(g["first_ack_full_table"],
                                                     c["dsr_first_ack"]),
        "dsr_first_ack_mean_over_median": round(c["dsr_first_ack"]["mean_ns"]
                                                - c["dsr_first_ack"]["ns"], 1),
        "dsr_established_over_nonvip": diff(c["dsr_established"], c["nonvip"]),
        "ipip_established_over_dsr": diff(c["ipip_established"], c["dsr_established"]),
        "ipip_sc_established_over_ipip": diff(c["ipip_sc_established"], c["ipip_established"]),
        "dsr_flood_established_over_established": diff(c["dsr_syn_flood_established"],
                                                       c["dsr_established"]),
        "ipip_flood_established_over_established": diff(c["ipip_syn_flood_established"],
                                                        c["ipip_established"]),
    }
    for op in ("op_lru_insert", "op_lru_percpu_insert", "op_lru_lookup_miss",
               "op_lru_lookup_empty", "op_lru_lookup_empty_64k", "op_ring_slot"):
        out[f"{op}_over_nothing"] = diff(g[op], g["op_nothing"])
    if "before_dsr_established" in g:
        for name in ("nonvip", "dsr_established", "ipip_established"):
            out[f"{name}_now_over_before_program"] = diff(c[name], g[f"before_{name}"])
        out["dsr_syn_now_over_before_program"] = diff(c["dsr_syn"], g["before_dsr_syn"])
    if "patched_dsr_established" in g:
        for name in ("nonvip", "dsr_established", "ipip_established", "dsr_syn", "dsr_first_ack"):
            out[f"{name}_now_over_patched"] = diff(c[name], g[f"patched_{name}"])
        out["patched_ipip_established_over_dsr"] = diff(g["patched_ipip_established"],
                                                         g["patched_dsr_established"])
    return out


LRU_REFILL = 128   # the kernel's LOCAL_FREE_TARGET: free nodes a CPU takes per refill


def lru_lock_model(result: dict) -> dict:
    """Arithmetic from measured figures, not a measurement: the common LRU takes
    its one global lock when a CPU's local free list is empty, once per 128
    inserts, and holds it while it moves 128 free nodes over (evicting them
    first when the table is full). The slowest 1/128 of the insert calls are
    those; what they cost over an ordinary insert, spread over 128 inserts, is
    the lock time each insert needs. N cores inserting flat out need N times
    that; past one whole lock's worth of time the lock is the bottleneck."""
    c, g = result["cases"], result["diagnostics"]
    out = {"what": "What the measured refill calls mean for more cores (arithmetic from this "
                   "run's figures, not a measurement; queueing below saturation is left out): "
                   "a refill call took {{lru_global_lock.not_full.refill_ns}} ns in the table "
                   "that is not full and {{lru_global_lock.full.refill_ns}} ns in the full one, "
                   "against {{lru_global_lock.not_full.insert_ns}} and "
                   "{{lru_global_lock.full.insert_ns}} ns for an ordinary insert; the global "
                   "lock is held for nearly all of it, once per 128 inserts per CPU."}
    for state, fig in (("not_full", c["dsr_first_ack"]), ("full", g["first_ack_full_table"])):
        lock = max(0.0, fig["slowest_1_128_ns"] - fig["ns"]) / LRU_REFILL
        if lock <= 0:
            continue
        per_insert = fig["mean_ns"]
        out[state] = {"insert_ns": fig["ns"], "refill_ns": fig["slowest_1_128_ns"],
                      "lock_ns_per_insert": round(lock, 1),
                      "lock_limit_inserts_per_s": round(1e9 / lock),
                      "cores": {n: {"saturates_at_per_core_per_s": round(1e9 / lock / n),
                                    "per_insert_ns_all_inserting": round(max(per_insert, n * lock))}
                                for n in (2, 16, 64)}}
    return out


# --- both cores at once ---------------------------------------------------------------
def _overlap(a_starts, a_ends, b_starts, b_ends) -> float:
    """Share of A's calls whose syscall window overlapped one of B's."""
    j, hit = 0, 0
    for s, e in zip(a_starts, a_ends):
        while j < len(b_ends) and b_ends[j] < s:
            j += 1
        if j < len(b_starts) and b_starts[j] <= e:
            hit += 1
    return hit / len(a_starts) if len(a_starts) else 0.0


STRESS_OPS = 128   # mapcost inserts per call in the stress kinds: one LRU refill's worth


def measure_cores(workers: Workers, dp: Datapath, dp_flood: Datapath, mapcost: MapCost,
                  floor_fd: int, flows: Flows, nonvip: bytes, calls: int, rounds: int) -> dict:
    """Per kind and round: CPU 0 alone, CPU 1 alone, both at once (orders rotated)."""
    run = Runner(0, lean=False)
    own_established = [packet(ESTABLISHED["dsr"][0], f"198.18.42.{cpu + 1}", 40000,
                              ESTABLISHED["dsr"][1]) for cpu in (0, 1)]
    for frame in own_established:          # each worker its own established flow
        run(dp.prog_fd, frame)
    stress_calls = max(20, calls // 16)
    stress = MapCost.frame(STRESS_OPS)
    kinds = ("floor", "established", "first_ack", "first_ack_full_table",
             "lru_insert_x128", "lru_percpu_insert_x128")
    arrangements = ("cpu0", "cpu1", "both")
    slots = ("one", "both")
    per_round = {k: {a: [] for a in slots} for k in kinds}
    per_round_mean = {k: {a: [] for a in slots} for k in kinds}
    pooled = {k: {a: [] for a in slots} for k in kinds}
    overlap, duty = {k: [] for k in kinds}, {k: [] for k in kinds}

    def job(kind: str, cpu: int):
        if kind == "floor":
            return floor_fd, [nonvip] * calls, []
        if kind == "established":
            return dp.prog_fd, [own_established[cpu]] * calls, []
        if kind.startswith("lru_"):
            return mapcost.fd[kind[:-len("_x128")]], [stress] * stress_calls, []
        ids = flows.take(calls)
        target = dp if kind == "first_ack" else dp_flood
        vip = VIP["dsr"] if kind == "first_ack" else FLOOD_VIP["dsr"]
        return (target.prog_fd, Flows.frames(ids, *vip, ACK),
                [(target.prog_fd, Flows.frames(ids, *vip, SYN), 0)])

    def percpu_inserts(table: Datapath) -> list[int]:
        per_cpu = table.global_stats[ctypes.c_uint32(0)]
        return [per_cpu[c].ct_inserts_tcp for c in (0, 1)]

    for r in range(rounds):
        for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
            values = {"one": [], "both": []}
            for arrangement in arrangements[r % 3:] + arrangements[:r % 3]:
                active = [0, 1] if arrangement == "both" else [int(arrangement[-1])]
                for cpu in active:
                    workers.prepare(cpu, *job(kind, cpu))
                for cpu in active:
                    workers.ready(cpu)
                table = dp if kind == "first_ack" else dp_flood
                inserts0 = percpu_inserts(table)
                got = workers.go(active)
                if kind.startswith("first_ack"):
                    made = [b - a for a, b in zip(inserts0, percpu_inserts(table))]
                    want = [calls if cpu in active else 0 for cpu in (0, 1)]
                    if made != want:
                        raise RuntimeError(f"{kind} {arrangement}: inserts per CPU {made}, "
                                           f"expected {want}")
                slot = "both" if arrangement == "both" else "one"
                for cpu in active:
                    values[slot].extend(got[cpu][0])
                if arrangement == "both":
                    (_, s0, e0), (_, s1, e1) = got[0], got[1]
                    overlap[kind].append(_overlap(s0, e0, s1, e1))
                    for d, s, e in got.values():
                        duty[kind].append(sum(d) / max(1, e[-1] - s[0]))
            for slot in slots:
                per_round[kind][slot].append(statistics.median(values[slot]))
                per_round_mean[kind][slot].append(trimmed_mean(values[slot]))
                pooled[kind][slot].extend(values[slot])

    out = {"method": "two processes forked after loading (the same programs and maps), pinned "
                     "with sched_setaffinity to CPU 0 and CPU 1, each its own flows, buffers made "
                     "once per process; per kind and round: CPU 0 alone, CPU 1 alone, both at "
                     "once, orders rotated per round. 'one' pools the two alone phases; figures "
                     "are the median over rounds of each round's median (or 99.9%-trimmed mean) "
                     "per call.",
           "calls_per_worker": calls, "stress_calls_per_worker": stress_calls,
           "stress_ops_per_call": STRESS_OPS, "rounds": rounds, "kinds": {}}
    for kind in kinds:
        k = {}
        for slot in slots:
            k[f"{slot}_ns"] = round(statistics.median(per_round[kind][slot]), 1)
            k[f"{slot}_mean_ns"] = round(statistics.median(per_round_mean[kind][slot]), 1)
            k[f"{slot}_spread_ns"] = [min(per_round[kind][slot]), max(per_round[kind][slot])]
            k[f"{slot}_p99_ns"] = percentile(pooled[kind][slot], 0.99)
            k[f"{slot}_p999_ns"] = percentile(pooled[kind][slot], 0.999)
            k[f"{slot}_slowest_1_128_ns"] = slowest_median(pooled[kind][slot])
        k["ratio"] = round(k["both_ns"] / k["one_ns"], 3)
        k["ratio_mean"] = round(k["both_mean_ns"] / k["one_mean_ns"], 3)
        k["overlap"] = round(statistics.median(overlap[kind]), 3)
        k["program_duty"] = round(statistics.median(duty[kind]), 3)
        out["kinds"][kind] = k
    fl = out["kinds"]["floor"]
    for kind in ("lru_insert_x128", "lru_percpu_insert_x128"):
        k = out["kinds"][kind]
        for slot in slots:
            k[f"{slot}_per_insert_ns"] = round((k[f"{slot}_mean_ns"] - fl[f"{slot}_mean_ns"])
                                               / STRESS_OPS, 1)
        k["ratio_per_insert"] = round(k["both_per_insert_ns"] / k["one_per_insert_ns"], 3)
    fa = out["kinds"]["first_ack"]
    out["goal"] = f"first_ack: both cores' per-insert cost within {CORES_GOAL}x of one core's"
    out["goal_met"] = fa["ratio"] <= CORES_GOAL and fa["ratio_mean"] <= CORES_GOAL
    return out


def main(argv: list[str] | None = None) -> int:
    import faulthandler

    faulthandler.enable()   # a crash in a C library shows where Python was
    parser = arguments(__doc__, "xdp_cost", "few calls: checks it runs, not how fast")
    parser.add_argument("--before", metavar="REV",
                        help="also time the program of git revision REV beside today's (e.g. "
                             "a7ccca8^, before a SYN stopped making entries)")
    parser.add_argument("--program", metavar="REV",
                        help="build today's program from git revision REV's xdp/ (e.g. HEAD) "
                             "instead of the working tree's")
    parser.add_argument("--patch", metavar="FILE",
                        help="also time today's program with FILE (a diff of xdp/, -p1) applied, "
                             "e.g. bench/notes/syn_without_lookup.patch")
    args = parser.parse_args(argv)
    calls, runs = (300, 2) if args.quick else (20000, 5)
    result = measure(calls, runs, args.quick, args.before, args.patch, args.program)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"floor (XDP_PASS): {result['floor_ns']} ns per call "
          f"(load {result['machine']['loadavg_start'][0]} -> {result['machine']['loadavg_end'][0]})")
    for name, case in result["cases"].items():
        goal = (f"goal {case['goal']}: {'met' if case['goal_met'] else 'MISSED'}"
                if case["goal"] else "no goal")
        print(f"{name:30} {case['ns']:8.1f} ns  {case['ratio_to_floor']:5.2f}x floor  "
              f"spread {case['spread_ns']}  mean {case['mean_ns']}  ({goal})")
    for name, d in result["diagnostics"].items():
        print(f"  diag {name:25} {d['ns']:8.1f} ns  {d['ratio_to_floor']:5.2f}x floor  mean {d['mean_ns']}")
    for name, v in result["breakdown"].items():
        print(f"  breakdown {name:40} {v:8.1f} ns")
    sc = result["second_chance"]
    print(f"second chance: ipip_sc_established / ipip_established = {sc['ratio']:.3f} "
          f"(over the floor {sc['ratio_over_floor']}; runs {sc['runs_ratio']}; "
          f"goal {sc['goal']}: {'met' if sc['goal_met'] else 'MISSED'})")
    cores = result.get("cores")
    if cores:
        for kind, v in cores["kinds"].items():
            print(f"cores {kind:24} one {v['one_ns']:8.1f}  both {v['both_ns']:8.1f}  "
                  f"x{v['ratio']:.3f}  (mean {v['one_mean_ns']} / {v['both_mean_ns']} "
                  f"x{v['ratio_mean']:.3f}; p99.9 {v['one_p999_ns']} / {v['both_p999_ns']}; "
                  f"overlap {v['overlap']}, duty {v['program_duty']})"
                  + (f" per insert {v['one_per_insert_ns']} / {v['both_per_insert_ns']}"
                     if "one_per_insert_ns" in v else ""))
        print(f"cores goal: {'met' if cores['goal_met'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
