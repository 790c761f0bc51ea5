"""The control socket's answers: every error is JSON with a message that says
what failed, never an exception's bare text (issue #11: `lbd check --diff`
printed a bare `('web', '198.18.7.26')`)."""
from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from lbd.config import load_config
from lbd.http import control_app

pytestmark = pytest.mark.unit


class _Daemon:
    """Only what the /diff and /status handlers use; the status view's first
    read fails as a bug inside lbd would."""

    def __init__(self, diff):
        self._diff = diff

    async def diff(self, path):
        return self._diff(path)

    @property
    def health(self):
        raise KeyError(("web", "198.18.7.26"))


def ask(diff, method: str, path: str, **kw):
    async def main():
        async with TestClient(TestServer(control_app(_Daemon(diff)))) as client:
            response = await client.request(method, path, **kw)
            return response.status, response.content_type, await response.json()
    return asyncio.run(main())


def test_unexpected_exception_is_json_naming_its_type_and_the_call():
    def diff(path):
        raise KeyError(("web", "198.18.7.26"))
    status, kind, body = ask(diff, "POST", "/diff", json={"path": "/etc/lbd/lbd.yaml"})
    assert (status, kind) == (500, "application/json")
    assert body["error"].startswith("POST /diff failed inside lbd: KeyError: ('web', '198.18.7.26')")
    assert "log" in body["error"]


def test_read_endpoint_error_is_json_too():
    status, _, body = ask(None, "GET", "/status")
    assert status == 500 and "GET /status failed inside lbd: KeyError" in body["error"]


def test_config_error_is_the_file_line_field_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("interfaces: [{name: eth0}]\nvips:\n  - {address: 198.18.0.10, port: 80, protocol: tcpp,"
                   " mode: dsr}\n")
    status, _, body = ask(load_config, "POST", "/diff", json={"path": str(bad)})
    assert status == 400
    assert body["error"].startswith(f"{bad}:3: vips[0].protocol: must be one of: tcp, udp, got \"tcpp\"")


@pytest.mark.parametrize("payload", [{"data": b"not json"}, {"json": {}}, {"json": ["x"]}])
def test_diff_without_a_path_says_what_it_needs(payload):
    status, kind, body = ask(None, "POST", "/diff", **payload)
    assert (status, kind) == (400, "application/json") and '{"path":' in body["error"]


def test_unknown_call_is_json():
    status, _, body = ask(None, "POST", "/nonsense")
    assert status == 404 and body == {"error": "POST /nonsense: Not Found"}
