"""GET requests to a Prometheus on the loopback, from inside a lab namespace
(tests/netns/test_prometheus.py runs it there with lab.run).

stdin: {"base": "http://127.0.0.1:PORT", "requests": [[path, {param: value or [values]}], ...]}
stdout: one JSON list, per request {"code": HTTP status (0: no answer), "body": JSON or text}.
"""
from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request


def main() -> int:
    job = json.load(sys.stdin)
    base = job["base"]
    if not base.startswith("http://127.0.0.1:"):
        raise SystemExit(f"only a Prometheus on 127.0.0.1, not {base}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # no proxy from the environment
    answers = []
    for path, params in job["requests"]:
        url = base + path + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
        try:
            with opener.open(url, timeout=job.get("timeout", 10)) as response:
                code, body = response.status, response.read().decode()
        except urllib.error.HTTPError as err:   # Prometheus says why in a JSON body (400, 422, 503)
            code, body = err.code, err.read().decode()
        except OSError as err:
            code, body = 0, str(err)
        try:
            body = json.loads(body)
        except ValueError:
            pass
        answers.append({"code": code, "body": body})
    json.dump(answers, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
