"""The status page at `/` (docs/operating.md, The status page) in a real
browser: Debian's headless Chromium, inside the lab's lbd namespace where the
HTTP endpoint listens on 127.0.0.1, loads it once and reads what it shows as a
backend goes down and comes back: the page must follow /status without being
reloaded, say why the backend is down, work from the keyboard, and fetch
nothing but its own /status. A phone-sized screenshot is kept in the test's
tmp_path (its path is printed)."""
from __future__ import annotations

import json

import pytest

from tests.netns.browser import Browser
from tests.netns.lbdrun import running, wait_for

pytestmark = pytest.mark.netns
PAGE = "http://127.0.0.1:9100/"  # lbdrun's http.listen, inside the lbd namespace

# What a row of the page shows, read from the page's DOM after its script ran.
ROW = """(() => {
  const row = document.querySelector('tr[data-vip="%s"][data-backend="%s"]');
  if (!row) return null;
  const cell = field => row.querySelector('[data-field="' + field + '"]').textContent;
  return {state: cell("state"), health: cell("health"), reason: cell("health_reason")};
})()"""


@pytest.fixture(scope="module")
def lbd(lab):
    with running(lab) as daemon:
        yield daemon


@pytest.fixture
def browser(lab, tmp_path):
    chromium = Browser(lab.lbd.ns, str(tmp_path / "profile"))
    try:
        yield chromium
    finally:
        chromium.close()


def backend_json(lbd, vip: str, address: str) -> dict:
    return next(b for b in lbd.vip(vip)["backends"] if b["address"] == address)


def test_the_page_follows_a_backend_down_and_back_without_a_reload(lab, lbd, browser, tmp_path):
    b2 = str(lab.backends["b2"].v4)
    wait_for(lambda: all(b["health"] == "UP" for b in lbd.vip("web4")["backends"]), 15,
             what="web4's backends UP")
    browser.open(PAGE)
    row = lambda: browser.evaluate(ROW % ("web4", b2))  # noqa: E731
    assert wait_for(lambda: row() if (row() or {}).get("health") == "UP" else None, 15,
                    what="the page shows b2 UP") == {"state": "active", "health": "UP", "reason": "status 200"}
    # every VIP of the config, each its own section and table
    names = browser.evaluate("[...document.querySelectorAll('section[data-vip]')].map(s => s.dataset.vip)")
    assert names == [v["name"] for v in lbd.status()["vips"]]
    loads = browser.evaluate("performance.getEntriesByType('navigation').length")

    lab.stop_server("b2", "http")
    try:
        wait_for(lambda: backend_json(lbd, "web4", b2)["health"] == "DOWN", 15, what="lbd marks b2 DOWN")
        down = wait_for(lambda: row() if row()["health"] == "DOWN" else None, 10, what="the page shows b2 DOWN")
        # the reason is the daemon's: what the last check found
        assert down["state"] == "down" and down["reason"] == backend_json(lbd, "web4", b2)["health_detail"]
        assert down["reason"]  # e.g. "connect refused"
        summary = browser.evaluate("document.getElementById('summary').textContent")
        assert "1 backend out of the tables" in summary
        shot = tmp_path / "status-page-b2-down.png"
        browser.screenshot(str(shot))
        print(f"status page screenshot (phone size, b2 down): {shot}")
    finally:
        lab.start_server("b2", "http")
    wait_for(lambda: backend_json(lbd, "web4", b2)["health"] == "UP", 15, what="lbd marks b2 UP again")
    back = wait_for(lambda: row() if row()["health"] == "UP" else None, 10, what="the page shows b2 UP again")
    assert back["state"] == "active"
    # all of that on the one page load: the script followed /status
    assert browser.evaluate("performance.getEntriesByType('navigation').length") == loads
    # and it fetched nothing but /status from its own origin
    fetched = browser.evaluate("[...new Set(performance.getEntriesByType('resource').map(r => r.name))]")
    assert fetched == [PAGE + "status"]
    shot = tmp_path / "status-page.png"
    browser.screenshot(str(shot))
    assert shot.stat().st_size > 1000
    print(f"status page screenshot (phone size): {shot}")


def test_the_page_works_from_the_keyboard(lbd, browser):
    browser.open(PAGE)
    wait_for(lambda: browser.evaluate("document.querySelectorAll('tbody tr').length") > 0, 15,
             what="the page drew its tables")
    browser.press("Tab", 9)
    assert browser.evaluate("document.activeElement.id") == "pause"
    browser.press("Enter", 13, "\r")
    assert browser.evaluate("document.activeElement.getAttribute('aria-pressed')") == "true"
    # on from the button: each VIP's table, in a region that scrolls on a phone
    browser.press("Tab", 9)
    focused = browser.evaluate("[document.activeElement.getAttribute('role'), "
                               "document.activeElement.getAttribute('aria-label')]")
    assert focused == ["region", f"Backends of {lbd.status()['vips'][0]['name']}"]
    tables = browser.evaluate("[...document.querySelectorAll('table')].map(t => [t.caption.textContent, "
                              "t.querySelectorAll('thead th[scope=col]').length, "
                              "t.querySelectorAll('tbody th[scope=row]').length])")
    assert all(cols == 13 and rows >= 1 for _, cols, rows in tables), tables


def test_the_page_is_one_self_contained_document(lab, lbd):
    """Its policy allows nothing but its own inline code and /status from its
    own origin, and it names no other file."""
    read = ("import json, urllib.request; r = urllib.request.urlopen(%r); "
            "print(json.dumps([r.headers['Content-Type'], r.headers['Content-Security-Policy'], "
            "r.read().decode()]))" % PAGE)
    result = lab.run(lab.lbd, ["python3", "-c", read], check=True)
    content_type, policy, body = json.loads(result.stdout)
    assert content_type.startswith("text/html")
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "<script src" not in body and "<link" not in body and "url(" not in body
    assert "http:" not in body and "https:" not in body
