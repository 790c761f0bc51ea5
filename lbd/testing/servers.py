"""The lab's backends: nginx and the UDP echo on each, and `lbd-backend`
run in their namespaces (a part of lbd.testing.lab.Lab)."""
from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from lbd.testing.netns import _WAIT_STEP
from lbd.testing.topology import HTTP_PORT, UDP_PORT, Node

log = logging.getLogger("lbd.testing")


@dataclass
class _Server:
    argv: list[str]
    proc: subprocess.Popen | None = None


class Servers:
    """Backend servers and backend preparation."""

    def _nginx_conf(self, backend: Node) -> str:
        root = os.path.join(self.tmpdir, backend.name)
        os.makedirs(root, exist_ok=True)
        conf = os.path.join(root, "nginx.conf")
        temp = "".join(f"    {kind}_temp_path {root}/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        with open(os.path.join(root, "stream.txt"), "w") as f:
            f.write(f"{backend.name}\n" + ("." * 63 + "\n") * 32768)
        with open(conf, "w") as f:
            f.write(f"""# lab backend {backend.name}
user root;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type text/plain;
{temp}    server {{
        # wildcards, so the VIPs on lo are served too
        listen {HTTP_PORT};
        listen [::]:{HTTP_PORT} ipv6only=on;
        location = /healthz {{ return 200 "ok\\n"; }}
        location = /whoami {{ return 200 "{backend.name} $remote_addr\\n"; }}
        # a long-lived stream (about a minute): name first, then paced filler
        location = /stream {{ alias {root}/stream.txt; limit_rate 32k; }}
        location / {{ return 200 "{backend.name}\\n"; }}
    }}
}}
""")
        return conf

    def _server_argv(self, backend: Node, service: str) -> list[str]:
        if service == "http":
            conf = self._nginx_conf(backend)
            root = os.path.dirname(conf)
            return ["nginx", "-p", root, "-c", conf, "-e", f"{root}/error.log",
                    "-g", "daemon off;"]
        return [sys.executable, "-m", "lbd.testing.udp_echo", "--port", str(UDP_PORT),
                "--name", backend.name]

    def start_server(self, backend: str | Node, service: str = "all",
                     wait: bool = True) -> None:
        """Start the backend's nginx ("http"), UDP echo ("udp") or both ("all")."""
        backend = self.node(backend)
        services = ("http", "udp") if service == "all" else (service,)
        for svc in services:
            server = self._servers.setdefault((backend.name, svc),
                                              _Server(self._server_argv(backend, svc)))
            if server.proc is None or server.proc.poll() is not None:
                server.proc = self.spawn(backend, server.argv)
        if wait:
            for svc in services:
                self._wait_listening(backend, svc)

    def stop_server(self, backend: str | Node, service: str = "all") -> None:
        """Stop the backend's server(s), as a failing backend would."""
        backend = self.node(backend)
        for svc in ("http", "udp") if service == "all" else (service,):
            server = self._servers.get((backend.name, svc))
            if server and server.proc is not None:
                self.stop(server.proc)
                server.proc = None

    def server_running(self, backend: str | Node, service: str) -> bool:
        server = self._servers.get((self.node(backend).name, service))
        return bool(server and server.proc and server.proc.poll() is None)

    def _wait_listening(self, backend: Node, service: str, timeout: float = 10.0) -> None:
        server = self._servers[(backend.name, service)]
        proto, state = ("tcp", "0A") if service == "http" else ("udp", "07")
        port = HTTP_PORT if service == "http" else UDP_PORT
        deadline = time.monotonic() + timeout
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{service} server of {backend.name} exited with "
                                   f"{server.proc.returncode}; see {server.proc.log_path}")
            # /proc/<pid>/net shows the sockets of that process's network namespace
            if all(_listening(server.proc.pid, f"{proto}{v}", port, state) for v in ("", "6")):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service} server of {backend.name} not listening on "
                                   f"{port} after {timeout}s; see {server.proc.log_path}")
            time.sleep(_WAIT_STEP)

    # --- lbd-backend ---------------------------------------------------------------
    def backend_command(self, backend: str | Node, command: str, *args: str,
                        vips=None) -> list[str]:
        """argv of `lbd-backend <command>` for a backend, with the lab's VIPs.

        prepare shares one decap program among the ipip backends through a pin
        in the lab's bpffs_dir (compiled once, not once per backend), so run
        it with host_mounts=True, as prepare_backend() does.
        """
        backend = self.node(backend)
        argv = [sys.executable, "-m", "lbd.backend.cli", command]
        if command in ("prepare", "check"):
            argv += ["--mode", backend.mode, "--interface", backend.ifname]
            for vip in vips or (*self.vips_v4, *self.vips_v6):
                argv += ["--vip", str(vip)]
        if command == "prepare" and self.bpffs_dir:
            argv += ["--pin-dir", os.path.join(self.bpffs_dir, "decap")]
        return argv + list(args)

    def prepare_backend(self, backend: str | Node, *args: str,
                        vips=None) -> subprocess.CompletedProcess:
        """Run `lbd-backend prepare` in the backend's namespace; raises if it fails."""
        result = self.run(backend, self.backend_command(backend, "prepare", *args, vips=vips),
                          host_mounts=True)
        if result.returncode != 0:
            raise RuntimeError(f"lbd-backend prepare on {self.node(backend).name} failed: "
                               f"{result.stderr.strip() or result.stdout.strip()}")
        return result

    def check_backend(self, backend: str | Node, *args: str,
                      vips=None) -> subprocess.CompletedProcess:
        """Run `lbd-backend check` in the backend's namespace (exit 1 = a problem)."""
        return self.run(backend, self.backend_command(backend, "check", *args, vips=vips))

    def add_vips(self, vips_v4=(), vips_v6=()) -> None:
        """Add VIPs to the lab and prepare every backend for them."""
        self.vips_v4 += [ipaddress.IPv4Address(v) for v in vips_v4 if v not in self.vips_v4]
        self.vips_v6 += [ipaddress.IPv6Address(v) for v in vips_v6 if v not in self.vips_v6]
        self._prepare_all()

    def _prepare_all(self) -> None:
        self._finish_prepares(self._start_prepares())

    def _start_prepares(self) -> dict[str, subprocess.Popen]:
        return {b.name: subprocess.Popen(self._argv(b, self.backend_command(b, "prepare"), True),
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True)
                for b in self.backends.values()}

    def _finish_prepares(self, procs: dict[str, subprocess.Popen]) -> None:
        failed = []
        for name, proc in procs.items():
            try:
                out, _ = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            log.debug("lab_prepare backend=%s output=%s", name, out.strip().replace("\n", "; "))
            if proc.returncode != 0:
                failed.append(f"{name}: {out.strip()}")
        if failed:
            raise RuntimeError("lbd-backend prepare failed: " + " | ".join(failed))


def _listening(pid: int, table: str, port: int, state: str) -> bool:
    try:
        with open(f"/proc/{pid}/net/{table}") as f:
            rows = f.read().splitlines()[1:]
    except (FileNotFoundError, ProcessLookupError):
        return False
    for row in rows:
        fields = row.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
            return True
    return False
