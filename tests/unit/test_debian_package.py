"""The Debian package's sources (systemd/debian/) without building it: the
lock files pin what pyproject.toml asks for, with hashes; the maintainer
scripts parse and guard the running system; the control template, the
conffiles and the lintian overrides are well-formed; Depends comes from
hostsetup. The package itself is built, checked and installed into a
scratch root by tests/netns/test_deb.py (root)."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from lbd import hostsetup

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEBIAN = ROOT / "systemd" / "debian"
SCRIPTS = ("preinst", "postinst", "prerm", "postrm")


def _build():
    spec = importlib.util.spec_from_file_location("lbd_deb_build", DEBIAN / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$", line)
        if match:
            current = _normal(match.group(1))
            pins[current] = (match.group(2), 0)
        elif current and re.match(r"^\s+--hash=sha256:[0-9a-f]{64}( \\)?$", line):
            pins[current] = (pins[current][0], pins[current][1] + 1)
        elif not line.startswith("    "):
            current = None
    return pins


def test_lock_pins_every_runtime_dependency_exactly_with_hashes():
    pins = _locked(DEBIAN / "requirements.lock")
    assert pins == {name: (v, n) for name, (v, n) in pins.items() if n > 0}, "a pin without --hash"
    for spec in _pyproject()["project"]["dependencies"]:
        req = Requirement(spec)
        assert _normal(req.name) in pins, f"{req.name} is not in requirements.lock: make deb-lock"
        assert req.specifier.contains(pins[_normal(req.name)][0]), (spec, pins[_normal(req.name)])
    assert "setuptools" not in pins and "pip" not in pins  # the venv is made --without-pip
    assert _build().lock_blocks(DEBIAN / "requirements.lock") == {k: v for k, (v, _) in pins.items()}


def test_build_lock_pins_the_build_backend():
    pins = _locked(DEBIAN / "build-requirements.lock")
    assert all(n > 0 for _, n in pins.values()), pins
    for spec in _pyproject()["build-system"]["requires"]:
        req = Requirement(spec)
        assert req.specifier.contains(pins[_normal(req.name)][0]), (spec, pins)


def test_locks_say_how_to_regenerate_them_and_make_has_the_targets():
    for lock in ("requirements.lock", "build-requirements.lock"):
        text = (DEBIAN / lock).read_text()
        assert text.startswith(_build().LOCK_HEADER) and "make deb-lock" in text
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^deb:\n\t/usr/bin/python3 systemd/debian/build.py --out \$\(DEB_OUT\)$", make, flags=re.M)
    assert re.search(r"^deb-lock:\n\t/usr/bin/python3 systemd/debian/build.py lock$", make, flags=re.M)


def test_depends_is_hostsetups_runtime_list_then_the_interpreter():
    build = _build()
    got = build.depends(["libc6 (>= 2.34)"])
    assert got[:len(hostsetup.RUNTIME_PACKAGES)] == hostsetup.RUNTIME_PACKAGES
    assert got[len(hostsetup.RUNTIME_PACKAGES):] == [*build.python_depends(), "libc6 (>= 2.34)"]
    # the packaging tools are not run-time packages
    assert not set(hostsetup.DEB_PACKAGES) & set(hostsetup.RUNTIME_PACKAGES)


def test_control_template_and_conffiles():
    build = _build()
    control = build.uncommented(DEBIAN / "control.in")
    fields = dict(re.findall(r"^([A-Z][\w-]*): (.*)$", control, flags=re.M))
    assert fields["Package"] == "lbd" and fields["Version"] == "@VERSION@" and fields["Depends"] == "@DEPENDS@"
    assert fields["Architecture"] == "@ARCH@" and len(fields["Description"]) <= 80
    assert set(re.findall(r"@([A-Z_]+)@", control)) == {"VERSION", "ARCH", "MAINTAINER", "INSTALLED_SIZE", "DEPENDS"}
    assert build.conffiles() == ["/etc/lbd/lbd.yaml", "/etc/default/lbd"]
    for source in build.CONFFILE_SOURCES.values():
        assert (ROOT / source).is_file(), source


@pytest.mark.parametrize("script", SCRIPTS)
def test_maintainer_scripts_parse_and_guard_the_running_system(script):
    path = DEBIAN / script
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n") and "\nset -e\n" in text and path.stat().st_mode & 0o111
    subprocess.run(["sh", "-n", str(path)], check=True)
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    code = re.sub(r"\"[^\"\n]*\"|'[^'\n]*'", '""', code)  # what it says, not what it runs
    # services only through deb-systemd-invoke (policy-rc.d); systemctl only to reload
    assert re.findall(r"\bsystemctl\b.*", code) in ([], ["systemctl --system daemon-reload >/dev/null || true"])
    # anything that acts on the running system is behind the DPKG_ROOT guard
    for line in code.splitlines():
        if re.search(r"deb-systemd-invoke|daemon-reload|--teardown", line):
            before = code[:code.index(line)]
            # if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then (quotes emptied above)
            assert 'if [ -z "" ] && [ -d /run/systemd/system ]; then' in before, line


def test_lintian_overrides_are_well_formed_and_explained():
    lines = (DEBIAN / "lintian-overrides").read_text().splitlines()
    overrides = [line for line in lines if line and not line.startswith("#")]
    assert overrides
    for line in overrides:
        assert re.fullmatch(r"lbd: [a-z0-9-]+( \S+)* \[[^\]]+\]", line), line
    for index, line in enumerate(lines):  # each block of overrides follows a comment
        if line in overrides and (index == 0 or lines[index - 1] not in overrides):
            assert lines[index - 1].startswith("#"), line


def test_the_package_ships_every_systemd_unit():
    units = {p.name for p in (ROOT / "systemd").iterdir() if p.suffix in (".service", ".timer")}
    assert set(_build().UNITS) == units
