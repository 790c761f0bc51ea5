"""What telling live flows from idle ones costs (issue #15): the daemon's walk
of a full connection table, and the packet path's upkeep of an entry's
`seen` and FIN/RST mark.

  walk         a 1M-entry TCP table filled through the map (bpf_map_update_batch:
               100 backends, a third of the entries idle, a tenth closed by
               their client), then lbd.dataplane.flowtable.sample (both tables, what the
               daemon does every 10 s) and lbd.dataplane.flowtable.backend_flows (one
               backend's flows, what `lbctl wait-drained` asks for), several runs
               each, median; beside them the walk as it was before (the
               flowtable.py of --before, which counted every entry), same table;
               then the settle walk (lbd.dataplane.settle.settle, run after each
               sample), several runs, median.
  established  a packet of an established DSR flow through today's program and
               through the program of --before (git revision), BPF_PROG_TEST_RUN,
               per call (repeat=1) and median, beside lbd_pass (the floor):
                 warm   the same flow every call;
                 cold   a different flow of a full 1M-entry table every call (in
                        random order, 2^18 of them: far more memory than the
                        caches hold), which is where a 16-byte value (an element of
                        104 bytes, so half the elements span three cache lines
                        instead of two) would show.
               Which program goes first is drawn at random for every packet, so
               neither gains from the other warming shared memory; the change is
               also taken per packet (after - before on the same packet at the
               same moment), median per run, median of runs. The timer moves in
               steps of ~10 ns; below that, the warm case once more in repeat
               mode (the kernel's mean of 1,000 runs per call).

    python -m bench.flowcount [--quick] [--before REV] [--out FILE]

Prints the figures and writes them to --out (JSON; default
bench/results/flowcount.json).
"""
from __future__ import annotations

import ctypes
import importlib.util
import ipaddress
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import arguments, loadavg, save
from bench.xdp_cost import xdp_tree
from lbd.dataplane import bpfsys, layout, settle
from lbd.dataplane.maps import Datapath, Limits, addr_words, load_helper, port_word
from lbd.plan import BackendPlan, VipPlan
from lbd.dataplane.programmer import Programmer

REPO = Path(__file__).resolve().parent.parent
BEFORE = "0aa4a46"  # the last revision whose entries held only (backend_id, generation)
VIP, PORT = "198.18.100.7", 80
OUR_MAC = bytes.fromhex("020000000a01")
REPEAT = 1000  # runs per call in the repeat-mode figure
ip = ipaddress.ip_address


# --- a table filled through the map ------------------------------------------------------
def program(dp: Datapath, backends: int) -> list[int]:
    """One DSR VIP with `backends` backends; their ids."""
    members = tuple(BackendPlan(ip(f"198.18.{i // 200}.{10 + i % 200}"), 100,
                                dst_mac=bytes([2, 0xbe, 0, 0, i // 256, i % 256]), src_mac=OUR_MAC)
                    for i in range(backends))
    programmer = Programmer(dp)
    programmer.apply([VipPlan(ip(VIP), PORT, 6, backends=members, name="web")])
    return sorted(programmer.applied()[(ip(VIP), PORT, 6)].backend_ids.values())


def flow_keys(dp: Datapath, count: int, seed: int = 15) -> np.ndarray:
    """`count` distinct TCP flow keys to the VIP, as the map's key bytes."""
    key = dp.conntrack.Key
    rng = np.random.default_rng(seed)
    n = np.arange(count, dtype=np.uint32)
    keys = np.zeros(count, dtype=np.dtype({
        "names": ["src", "dst", "sport", "dport", "proto", "family"],
        "formats": ["<u4", "<u4", "<u2", "<u2", "u1", "u1"],
        "offsets": [key.src.offset, key.dst.offset, key.sport.offset, key.dport.offset,
                    key.proto.offset, key.family.offset],
        "itemsize": ctypes.sizeof(key)}))
    # source 10.(n>>16).(n>>8).n in network order, a random source port
    keys["src"] = (10 | ((n >> 16) & 0xff) << 8 | ((n >> 8) & 0xff) << 16 | (n & 0xff) << 24)
    keys["dst"] = addr_words(ip(VIP))[0]
    keys["sport"] = rng.integers(1024, 65535, count).astype(">u2").view("<u2")
    keys["dport"] = port_word(PORT)
    keys["proto"] = 6
    keys["family"] = 4
    return keys


def update_batch(fd: int, keys: bytes, values: bytes, key_size: int, value_size: int) -> None:
    total = len(keys) // key_size
    done, chunk = 0, 65536
    while done < total:
        n = ctypes.c_uint32(min(chunk, total - done))
        k = ctypes.c_char_p(keys[done * key_size:(done + n.value) * key_size])
        v = ctypes.c_char_p(values[done * value_size:(done + n.value) * value_size])
        bpfsys._check(bpfsys._libbpf.bpf_map_update_batch(fd, k, v, ctypes.byref(n), None),
                      "BPF_MAP_UPDATE_BATCH")
        done += n.value


def fill(dp: Datapath, keys: np.ndarray, backend_ids: list[int], seed: int = 15) -> None:
    """Every key an entry of one of the backends: two thirds seen within the
    last 10 s, a third 1-10 minutes ago, a tenth marked closed by their client."""
    leaf = dp.conntrack.Leaf
    names = [n for n, _ in leaf._fields_]
    rng = np.random.default_rng(seed)
    count = len(keys)
    values = np.zeros(count, dtype=np.dtype({
        "names": names, "formats": ["<u4"] * len(names),
        "offsets": [getattr(leaf, n).offset for n in names], "itemsize": ctypes.sizeof(leaf)}))
    pick = rng.integers(0, len(backend_ids), count)
    values["backend_id"] = np.array(backend_ids, dtype=np.uint32)[pick]
    values["generation"] = np.array([dp.backend(i).generation for i in backend_ids], dtype=np.uint32)[pick]
    if "seen" in names:
        hz, now = dp.hz, dp.jiffies()
        age_s = np.where(rng.random(count) < 2 / 3, rng.uniform(0, 10, count), rng.uniform(60, 600, count))
        values["seen"] = (now - (age_s * hz).astype(np.int64)) & 0xFFFFFFFF
        values["flags"] = np.where(rng.random(count) < 0.1, layout.constant("LBD_FLOW_CLIENT_CLOSED"), 0)
    update_batch(dp.conntrack.map_fd, keys.tobytes(), values.tobytes(), keys.itemsize,
                 values.itemsize)


def entries(dp: Datapath) -> int:
    key, leaf = ctypes.sizeof(dp.conntrack.Key), ctypes.sizeof(dp.conntrack.Leaf)
    return len(bpfsys.lookup_hash_values(dp.conntrack.map_fd, key, leaf)) // leaf


def old_flowtable(rev: str):
    """lbd/dataplane/flowtable.py as it was at `rev` (lbd/flowtable.py before
    the layers became folders), imported beside today's."""
    for path, imports in (("lbd/dataplane/flowtable.py", ""), ("lbd/flowtable.py", "from lbd import")):
        shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, capture_output=True, text=True)
        if shown.returncode == 0:
            break
    else:
        raise SystemExit(f"flowcount: no flowtable.py at {rev}")
    # the data-plane modules it imports live in lbd/dataplane/ now
    text = shown.stdout.replace(imports, "from lbd.dataplane import") if imports else shown.stdout
    path = Path(tempfile.mkdtemp(prefix="lbd-flowtable-")) / "flowtable_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("flowtable_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def measure_walk(runs: int, size: int, before: str) -> dict:
    from lbd.dataplane import flowtable
    dp = Datapath(Limits(conntrack_size=size))
    ids = program(dp, 100)
    t0 = time.monotonic()
    fill(dp, flow_keys(dp, size), ids)
    fill_s = time.monotonic() - t0
    held = entries(dp)
    old = old_flowtable(before)
    sample_s, tcp_walk_s, backend_s, old_s = [], [], [], []
    for _ in range(runs):           # interleaved, so load hits all alike
        t0 = time.monotonic()
        usage = flowtable.sample(dp)
        sample_s.append(time.monotonic() - t0)
        tcp_walk_s.append(usage["tcp"].walk_seconds)
        t0 = time.monotonic()
        one = flowtable.backend_flows(dp, "tcp", ids[0], flowtable.IDLE_AFTER_S)
        backend_s.append(time.monotonic() - t0)
        t0 = time.monotonic()
        old.sample(dp)
        old_s.append(time.monotonic() - t0)
    live = sum(usage["tcp"].by_backend.values())
    idle = sum(usage["tcp"].idle_by_backend.values())
    assert live + idle == held, (live, idle, held)
    # the settle walk (lbd.dataplane.settle), which the daemon runs after each
    # sample: its first run also removes the ended entries that agree
    settle_s, walks = [], []
    for _ in range(runs):
        walk = settle.settle(dp)
        settle_s.append(walk.seconds)
        walks.append(walk)
    return {"settle_s": _summary(settle_s), "settle_first": walks[0].__dict__,
            "settle_last": walks[-1].__dict__,
            "table_entries": held, "capacity": size, "fill_s": round(fill_s, 2), "runs": runs,
            "live": live, "idle": idle, "one_backend": {"live": one.live, "idle": one.idle},
            "sample_s": _summary(sample_s), "sample_tcp_walk_s": _summary(tcp_walk_s),
            "backend_flows_s": _summary(backend_s), "before_sample_s": _summary(old_s),
            "before": before}


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4)}


# --- the packet path -----------------------------------------------------------------
def load_at(rev: str) -> Datapath:
    """The program of git revision `rev` (its xdp/, with the maps today's Datapath expects
    declared), loaded by today's Datapath."""
    tree = xdp_tree(rev, tempfile.mkdtemp(prefix="lbd-xdp-before-"))
    if tree is None:
        raise SystemExit(f"--before {rev}: git cannot give that revision's xdp/ here")
    saved = layout.XDP_DIR
    layout.XDP_DIR = tree
    try:
        return Datapath()
    finally:
        layout.XDP_DIR = saved


def frames(keys: np.ndarray) -> list[bytes]:
    """An ACK of each flow (Ethernet, IPv4, TCP; no checksum is read)."""
    template = bytearray(14 + 20 + 20 + 10)
    template[0:6], template[6:12], template[12:14] = OUR_MAC, bytes.fromhex("02000000c001"), b"\x08\x00"
    template[14:34] = bytes([0x45, 0, 0, 50, 0, 0, 0x40, 0, 64, 6, 0, 0]) + bytes(4) + ip(VIP).packed
    template[34 + 12], template[34 + 13] = 0x50, 0x10        # data offset 5, ACK
    template[36:38] = PORT.to_bytes(2, "big")
    out = []
    for src, sport in zip(keys["src"].tolist(), keys["sport"].tolist()):
        template[26:30] = int(src).to_bytes(4, "little")     # the key holds network order
        template[34:36] = int(sport).to_bytes(2, "little")
        out.append(bytes(template))
    return out


def measure_established(runs: int, calls: int, cold_flows: int, before: str) -> dict:
    floor_bpf, floor_fn = load_helper("lbd_pass")
    programs = {"after": Datapath(), "before": load_at(before)}
    capacity = programs["after"].limits.conntrack_size
    size = capacity * 95 // 100   # full but for the LRU's slack, so no flow of the sample is evicted
    keys = flow_keys(programs["after"], size)
    rng = random.Random(15)
    cold_index = rng.sample(range(size), cold_flows)
    cold = frames(keys[cold_index])
    warm = frames(keys[:1])[0]
    for dp in programs.values():
        fill(dp, keys, program(dp, 3))
        hits = dp.global_counters()["ct_hits"]
        out = dp.test_run(warm)
        assert out.action == 3 and dp.global_counters()["ct_hits"] == hits + 1, "not an established flow"
    fds = {name: dp.prog_fd for name, dp in programs.items()}
    medians = {f"{name}_{case}": [] for name in ("floor", *fds) for case in ("warm", "cold")}
    hits_before = {name: dp.global_counters()["ct_hits"] for name, dp in programs.items()}
    paired = {"warm": [], "cold": []}   # after - before, the same packet at the same moment
    order = list(fds)
    for _ in range(runs):
        times = {name: [] for name in medians}
        rng.shuffle(cold)
        for i in range(calls):
            times["floor_warm"].append(bpfsys.test_run(floor_fn.fd, warm).duration_ns)
            frame = cold[i % len(cold)]
            for case, packet in (("warm", warm), ("cold", frame)):
                rng.shuffle(order)   # which program goes first, at random
                for name in order:
                    times[f"{name}_{case}"].append(bpfsys.test_run(fds[name], packet).duration_ns)
        times["floor_cold"] = times["floor_warm"]
        for name, values in times.items():
            medians[name].append(statistics.median(values))
        for case in paired:
            paired[case].append(statistics.median(
                a - b for a, b in zip(times[f"after_{case}"], times[f"before_{case}"])))
    for name, dp in programs.items():
        hits = dp.global_counters()["ct_hits"] - hits_before[name]
        assert hits == 2 * runs * calls, f"{name}: {hits} hits of {2 * runs * calls} packets"
    # Finer than the timer's 10 ns steps: the kernel's mean over REPEAT runs of
    # one call. Right for dsr only (the program runs again on the frame it left
    # behind, which keeps the 5-tuple: only the MACs changed).
    repeat = {"floor": [], **{name: [] for name in fds}}
    for _ in range(runs * 20):
        rng.shuffle(order)
        repeat["floor"].append(bpfsys.test_run(floor_fn.fd, warm, repeat=REPEAT).duration_ns)
        for name in order:
            repeat[name].append(bpfsys.test_run(fds[name], warm, repeat=REPEAT).duration_ns)
    floor = statistics.median(medians["floor_warm"])
    result = {"floor_ns": floor, "runs": runs, "calls_per_run": calls, "cold_flows": cold_flows,
              "table_entries": size, "table_capacity": capacity, "before": before, "cases": {}}
    for case in ("warm", "cold"):
        for name in fds:
            per_run = medians[f"{name}_{case}"]
            ns = statistics.median(per_run)
            result["cases"][f"{name}_{case}"] = {
                "ns": ns, "ratio_to_floor": round(ns / floor, 3),
                "spread_ns": [min(per_run), max(per_run)]}
        result["cases"][f"delta_{case}_ns"] = round(statistics.median(paired[case]), 1)
        result["cases"][f"delta_{case}_spread_ns"] = [min(paired[case]), max(paired[case])]
    result["warm_repeat"] = {name: statistics.median(v) for name, v in repeat.items()}
    result["warm_repeat"]["repeat"] = REPEAT
    result["warm_repeat"]["delta_ns"] = round(
        statistics.median(a - b for a, b in zip(repeat["after"], repeat["before"])), 2)
    floor_bpf.cleanup()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, "flowcount", "a small table and few calls: checks it runs")
    parser.add_argument("--before", default=BEFORE, help=f"the revision to compare with (default {BEFORE})")
    parser.add_argument("--only", choices=("walk", "established"))
    args = parser.parse_args(argv)
    load_start = loadavg()
    result = {}
    if args.only in (None, "walk"):
        result["walk"] = measure_walk(3 if args.quick else 7, 65536 if args.quick else 1 << 20, args.before)
        w = result["walk"]
        print(f"walk of {w['table_entries']} entries ({w['live']} live, {w['idle']} idle): "
              f"sample {w['sample_s']['median']} s (tcp table {w['sample_tcp_walk_s']['median']} s), "
              f"one backend {w['backend_flows_s']['median']} s, before {w['before_sample_s']['median']} s "
              f"(medians of {w['runs']}; min-max {w['sample_s']['min']}-{w['sample_s']['max']}); "
              f"settle walk {w['settle_s']['median']} s (first: {w['settle_first']})")
    if args.only in (None, "established"):
        result["established"] = measure_established(2 if args.quick else 5, 300 if args.quick else 20000,
                                                    4096 if args.quick else 1 << 18, args.before)
        e = result["established"]
        print(f"floor (XDP_PASS) {e['floor_ns']} ns")
        for name, case in e["cases"].items():
            if isinstance(case, dict):
                print(f"  {name:12} {case['ns']:7.1f} ns  {case['ratio_to_floor']:5.2f}x floor  "
                      f"spread {case['spread_ns']}")
            elif not name.endswith("spread_ns"):
                print(f"  {name:12} {case:+7.1f} ns (after - before, per packet, median of runs; "
                      f"runs {e['cases'][name.replace('_ns', '_spread_ns')]})")
        r = e["warm_repeat"]
        print(f"  warm, kernel's mean of {r['repeat']} runs: floor {r['floor']} ns, after {r['after']} ns, "
              f"before {r['before']} ns, after - before {r['delta_ns']:+} ns")
    save(result, args, "test_run", load_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
