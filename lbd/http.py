"""HTTP endpoints.

Public listener (config http.listen, 127.0.0.1:9100 by default), read-only:
  /metrics (Prometheus), /healthz (the event loop answers), /readyz (program
  attached and config applied), /status (JSON).
Control socket (config control.socket, a unix socket, mode 0660, owned by
root and the optional control.group): everything above plus the calls that
change state or reveal flows: POST /reload, GET and POST /explain, POST
/diff, POST /drain and /undrain (BGP), POST /teardown. Nothing that changes
state is reachable over TCP.
"""
from __future__ import annotations

import asyncio
import grp
import json
import os
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from lbd.daemon import Daemon


def _json(data, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, indent=2, default=str) + "\n", status=status,
                        content_type="application/json")


def _read_routes(daemon: "Daemon") -> list:
    async def metrics(_request):
        body = generate_latest(daemon.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request):
        return web.Response(text="ok\n")

    async def readyz(_request):
        if daemon.ready:
            return web.Response(text="ready\n")
        return web.Response(text="not ready\n", status=503)

    async def status(_request):
        return _json(daemon.status())

    return [web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz),
            web.get("/status", status)]


def _control_routes(daemon: "Daemon") -> list:
    async def reload(_request):
        result = await daemon.reload()
        return _json(result, 200 if result["result"] == "success" else 409)

    async def explain(request):
        try:
            return _json(daemon.explain(request.query["client"], request.query["vip"]))
        except (KeyError, ValueError) as err:
            return _json({"error": f"explain needs client=ADDR:PORT and vip=ADDR:PORT/PROTO: {err}"}, 400)

    async def explain_many(request):
        """Many flows in one call ({"flows": [[client, vip], ...]}): a fleet check
        compares a thousand flows' backends across hosts."""
        try:
            flows = (await request.json())["flows"]
            return _json([daemon.explain(client, vip) for client, vip in flows])
        except (KeyError, ValueError, TypeError) as err:
            return _json({"error": f"explain needs flows: [[CLIENT_ADDR:PORT, VIP_ADDR:PORT/PROTO], ...]: "
                                   f"{err}"}, 400)

    def drain(drained: bool):
        async def handler(_request):
            if daemon.announcer is None:
                return _json({"error": "no bgp section in the config: nothing is announced to drain"}, 409)
            return _json(await daemon.announcer.set_drained(drained))
        return handler

    async def diff(request):
        body = await request.json()
        try:
            return _json(await daemon.diff(body["path"]))
        except Exception as err:  # ConfigError and friends: the operator reads the message
            return _json({"error": str(err)}, 400)

    async def teardown(_request):
        from lbd.daemon import teardown as do_teardown
        if daemon.announcer is not None:
            daemon.announcer.withdrawn_all = True   # its loop must not announce again meanwhile
        done = await asyncio.get_running_loop().run_in_executor(None, do_teardown, daemon.config)
        daemon.request_stop()
        return _json({"done": done})

    return [web.post("/reload", reload), web.get("/explain", explain), web.post("/explain", explain_many),
            web.post("/diff", diff), web.post("/teardown", teardown), web.post("/drain", drain(True)),
            web.post("/undrain", drain(False))]


async def serve(daemon: "Daemon") -> list[web.AppRunner]:
    public = web.Application()
    public.add_routes(_read_routes(daemon))
    control = web.Application()
    control.add_routes(_read_routes(daemon) + _control_routes(daemon))
    runners = []

    runner = web.AppRunner(public, access_log=None)
    await runner.setup()
    host, port = daemon.config.http_listen
    await web.TCPSite(runner, host, port).start()
    runners.append(runner)

    path = daemon.config.control_socket
    os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)  # left by a daemon that was killed
    runner = web.AppRunner(control, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    gid = grp.getgrnam(daemon.config.control_group).gr_gid if daemon.config.control_group else 0
    os.chown(path, 0, gid)
    os.chmod(path, 0o660)
    runners.append(runner)
    return runners
