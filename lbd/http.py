"""HTTP endpoints.

Public listener (config http.listen, 127.0.0.1:9100 by default), read-only:
  / (the status page, lbd.statuspage: a browser's view of /status, redrawn
  live), /metrics (Prometheus), /healthz (the event loop answers), /readyz
  (program attached and config applied), /status (JSON).
Control socket (config control.socket, a unix socket, mode 0660, owned by
root and the optional control.group): everything above plus the calls that
change state, reveal flows or cost a walk of a connection table: POST
/reload, GET and POST /explain, GET /flows (one backend's live and idle
flows, walked fresh: `lbctl wait-drained`), GET /capture (pcapng of the
packets the program handled, streamed: `lbctl capture`), POST /diff, POST /drain and
/undrain (BGP), POST /teardown. Nothing that changes state is reachable over
TCP.

Every error is a JSON object {"error": "..."} whose message says what failed;
an unexpected exception is logged with its traceback and named with its type,
never answered as its bare text (a KeyError's text is just the key).
"""
from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lbd import capture as capture_mod
from lbd import statuspage
from lbd.dataplane import flowtable
from lbd.config import ConfigError
from lbd.status import status_view
from lbd.teardown import teardown as teardown_pins

if TYPE_CHECKING:
    from lbd.daemon import Daemon


log = logging.getLogger("lbd.http")


def _json(data, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, indent=2, default=str) + "\n", status=status,
                        content_type="application/json")


@web.middleware
async def _json_errors(request: web.Request, handler):
    """Whatever goes wrong in a handler, the caller gets JSON that says what."""
    try:
        return await handler(request)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        return _json({"error": f"{request.method} {request.path}: {err.reason}"}, err.status)
    except Exception as err:
        log.exception("request_failed method=%s path=%s", request.method, request.path)
        return _json({"error": f"{request.method} {request.path} failed inside lbd: "
                               f"{type(err).__name__}: {err} (lbd's log has the traceback)"}, 500)


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
        return _json(status_view(daemon))

    async def page(_request):
        return web.Response(text=statuspage.PAGE, content_type="text/html",
                            headers={"Content-Security-Policy": statuspage.CONTENT_SECURITY_POLICY,
                                     "Cache-Control": "no-store"})

    return [web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz),
            web.get("/status", status), web.get("/", page)]


def _control_routes(daemon: "Daemon") -> list:
    async def reload(_request):
        result = await daemon.reload()
        return _json(result, 200 if result["result"] == "success" else 409)

    async def explain(request):
        try:
            return _json(daemon.explain(request.query["client"], request.query["vip"],
                                        request.query.get("quic_cid")))
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

    async def flows(request):
        """GET /flows?vip=NAME|ADDR:PORT/PROTO&backend=ADDR[&idle=SECONDS]"""
        try:
            vip, backend = request.query["vip"], request.query["backend"]
            idle = float(request.query.get("idle", flowtable.IDLE_AFTER_S))
            if not idle > 0:
                raise ValueError(f"idle must be above 0 seconds, got {idle}")
        except (KeyError, ValueError) as err:
            return _json({"error": f"flows needs vip=NAME|ADDR:PORT/PROTO, backend=ADDR and optionally "
                                   f"idle=SECONDS: {err}"}, 400)
        try:
            return _json(await daemon.backend_flows(vip, backend, idle))
        except LookupError as err:
            return _json({"error": str(err.args[0])}, 404)

    def drain(drained: bool):
        async def handler(_request):
            if daemon.announcer is None:
                return _json({"error": "no bgp section in the config: nothing is announced to drain"}, 409)
            return _json(await daemon.announcer.set_drained(drained))
        return handler

    async def diff(request):
        try:
            path = (await request.json())["path"]
        except (ValueError, KeyError, TypeError):
            return _json({"error": 'diff needs a JSON body {"path": "/absolute/path/of/the/file.yaml"}'}, 400)
        try:
            return _json(await daemon.diff(path))
        except ConfigError as err:  # file, line, field and value: the operator reads the message
            return _json({"error": str(err)}, 400)

    async def capture(request):
        """GET /capture?vip=&client=&backend=&action=&reason=&count=&duration=&rate=
        -> pcapng, streamed until a bound is reached or the client goes away."""
        try:
            spec = capture_mod.spec_from_query(request.query, daemon)
        except (ValueError, LookupError) as err:
            return _json({"error": f"capture: {err.args[0]}"}, 400)
        if daemon.capture_lock.locked():
            return _json({"error": "capture: another capture is running (one at a time)"}, 409)
        async with daemon.capture_lock:
            response = web.StreamResponse(headers={"Content-Type": "application/x-pcapng"})
            await response.prepare(request)
            transport = request.transport
            daemon.capture_last = await capture_mod.run(
                daemon, spec, response, lambda: transport is None or transport.is_closing())
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
            return response

    async def teardown(_request):
        if daemon.announcer is not None:
            daemon.announcer.withdrawn_all = True   # its loop must not announce again meanwhile
        done = await asyncio.get_running_loop().run_in_executor(None, teardown_pins, daemon.config.bpffs,
                                                                 daemon.config.bgp)
        daemon.request_stop()
        return _json({"done": done})

    return [web.post("/reload", reload), web.get("/explain", explain), web.post("/explain", explain_many),
            web.get("/flows", flows), web.get("/capture", capture),
            web.post("/diff", diff), web.post("/teardown", teardown), web.post("/drain", drain(True)),
            web.post("/undrain", drain(False))]


def public_app(daemon: "Daemon") -> web.Application:
    app = web.Application(middlewares=[_json_errors])
    app.add_routes(_read_routes(daemon))
    return app


def control_app(daemon: "Daemon") -> web.Application:
    app = web.Application(middlewares=[_json_errors])
    app.add_routes(_read_routes(daemon) + _control_routes(daemon))
    return app


async def serve(daemon: "Daemon") -> list[web.AppRunner]:
    public, control = public_app(daemon), control_app(daemon)
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
