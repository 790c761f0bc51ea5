"""The Debian package (`make deb`: systemd/debian/build.py), built once for the
session into a temporary directory, then checked without changing the machine:

* its fields: version from pyproject.toml, the architecture dpkg reports,
  Depends led by hostsetup's RUNTIME_PACKAGES exactly; its conffiles;
* its files: the units, the conffiles' sources, the /usr/bin links, no
  byte-code; the venv's python (run at /opt/lbd inside a private mount
  namespace) imports lbd, bcc and the locked versions from the venv;
* lintian: no errors;
* installed into a scratch root (dpkg --root, scripts run chrootless with
  DPKG_ROOT), reinstalled over itself and upgraded to a newer version with
  the operator's /etc/lbd/lbd.yaml and /etc/default/lbd changed (kept: dpkg's
  conffile handling), removed (conffiles stay, everything else goes) and
  purged (nothing stays);
* the maintainer scripts' systemd side, run in a private mount namespace
  (overlays on /etc, /opt, /var/lib; its own /run) with systemd "running"
  (/run/systemd/system) and stand-ins for systemctl, deb-systemd-invoke,
  deb-systemd-helper and the venv's commands: what they call on install,
  upgrade, remove and purge, and nothing without systemd or under
  DPKG_ROOT; preinst moving a `make install` venv aside.

Root: dpkg --root and unshare. The build takes about a minute with pip's
cache warm (longer the first time: the lock's wheels come from PyPI).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import textwrap
import tomllib
from pathlib import Path

import pytest

from lbd import hostsetup

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
DEBIAN = ROOT / "systemd" / "debian"
CONFFILES = ["/etc/lbd/lbd.yaml", "/etc/default/lbd"]
UNITS = ["lbd.service", "lbd-bird.service"]
COMMANDS = ["lbd", "lbctl", "lbd-backend"]
# host paths the package would touch if anything escaped the scratch root
HOST_PATHS = ["/etc/lbd", "/etc/default/lbd", "/lib/systemd/system/lbd.service",
              "/lib/systemd/system/lbd-bird.service", "/usr/bin/lbd", "/usr/bin/lbctl", "/opt/lbd",
              "/var/lib/systemd/deb-systemd-helper-enabled/lbd.service.dsh-also",
              "/var/lib/systemd/deb-systemd-helper-masked/lbd.service", "/var/lib/dpkg/info/lbd.list"]


def _run(*args, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                            check=False, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {result.returncode}:\n"
                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}", pytrace=False)
    return result


def _build_module():
    spec = importlib.util.spec_from_file_location("lbd_deb_build", DEBIAN / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def _host_state() -> dict[str, str | None]:
    state = {}
    for path in HOST_PATHS:
        p = Path(path)
        state[path] = f"{p.lstat().st_mtime_ns}" if p.is_symlink() or p.exists() else None
    return state


@pytest.fixture(scope="session")
def host_before():
    return _host_state()


@pytest.fixture(scope="session")
def deb(tmp_path_factory, host_before) -> Path:
    """`make deb`'s build, into a temporary directory (lintian runs in its own test)."""
    if os.geteuid() != 0:
        pytest.skip("the package tests need root (dpkg --root, unshare)")
    out = tmp_path_factory.mktemp("deb")
    _run("/usr/bin/python3", DEBIAN / "build.py", "--out", out, "--no-lintian", timeout=900)
    debs = list(out.glob("lbd_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


@pytest.fixture(scope="session")
def unpacked(deb, tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("unpacked")
    _run("dpkg-deb", "-x", deb, tree)
    _run("dpkg-deb", "-e", deb, tree / "DEBIAN")
    return tree


def test_name_fields_depends_and_conffiles(deb):
    arch = _run("dpkg", "--print-architecture").stdout.strip()
    assert deb.name == f"lbd_{_version()}_{arch}.deb"
    fields = dict(line.split(": ", 1) for line in
                  _run("dpkg-deb", "-f", deb, "Package", "Version", "Architecture").stdout.splitlines())
    assert fields == {"Package": "lbd", "Version": _version(), "Architecture": arch}

    depends = [d.strip() for d in _run("dpkg-deb", "-f", deb, "Depends").stdout.strip().split(",")]
    runtime = hostsetup.RUNTIME_PACKAGES
    # hostsetup's runtime packages, as they are, in their order ...
    assert depends[:len(runtime)] == runtime, depends
    # ... then only what the venv adds: its python3 minor version, and the
    # shared libraries its binaries link (dpkg-shlibdeps), libc6 among them.
    rest = depends[len(runtime):]
    assert rest[:2] == _build_module().python_depends() == ["python3 (>= 3.11~)", "python3 (<< 3.12)"], rest
    assert any(d.startswith("libc6 (>= ") for d in rest[2:]), rest
    for dep in rest[2:]:
        name = dep.split()[0]
        assert re.fullmatch(r"lib[a-z0-9.+-]+|zlib1g", name) and name not in runtime, dep

    conffiles = _run("dpkg-deb", "--info", deb, "conffiles").stdout.split()
    assert sorted(conffiles) == sorted(CONFFILES)


def test_files_units_links_and_no_bytecode(deb, unpacked):
    listing = _run("dpkg-deb", "-c", deb).stdout
    assert ".pyc" not in listing and "__pycache__" not in listing
    for unit in UNITS:
        assert (unpacked / "lib/systemd/system" / unit).read_bytes() == (ROOT / "systemd" / unit).read_bytes()
    assert (unpacked / "etc/lbd/lbd.yaml").read_bytes() == (ROOT / "configs/lbd.yaml").read_bytes()
    assert (unpacked / "etc/default/lbd").read_bytes() == (ROOT / "systemd/lbd.env").read_bytes()
    for command in COMMANDS:
        assert os.readlink(unpacked / "usr/bin" / command) == f"/opt/lbd/venv/bin/{command}"
        assert (unpacked / f"usr/share/man/man1/{command}.1.gz").exists()
        assert (unpacked / "opt/lbd/venv/bin" / command).read_text().startswith("#!/opt/lbd/venv/bin/python\n")
    for unit in UNITS:   # every page a unit's Documentation= names ships (systemctl help)
        for line in (ROOT / "systemd" / unit).read_text().splitlines():
            if line.startswith("Documentation="):
                for uri in line.removeprefix("Documentation=").split():
                    assert (unpacked / uri.removeprefix("file:/")).is_file(), (unit, uri)
    docs = sorted(page.name for page in (ROOT / "docs").glob("*.md"))
    assert sorted(page.name for page in (unpacked / "opt/lbd/docs").iterdir()) == docs
    cfg = (unpacked / "opt/lbd/venv/pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg and "home = /usr/bin" in cfg
    assert not (unpacked / "opt/lbd/venv/bin/pip").exists()  # dpkg owns the venv
    for script in ("preinst", "postinst", "prerm", "postrm"):
        assert (unpacked / "DEBIAN" / script).read_bytes() == (DEBIAN / script).read_bytes()
        assert os.access(unpacked / "DEBIAN" / script, os.X_OK)
    # md5sums covers every packaged file but the conffiles
    sums = dict(reversed(line.split("  ", 1)) for line in (unpacked / "DEBIAN/md5sums").read_text().splitlines())
    for page in ("README.md", *(f"docs/{name}" for name in docs)):
        assert sums[f"opt/lbd/{page}"] == hashlib.md5((unpacked / "opt/lbd" / page).read_bytes()).hexdigest()
    assert not any(c.lstrip("/") in sums for c in CONFFILES)


def _at_opt_lbd(tree: Path, *argv: str) -> subprocess.CompletedProcess:
    """argv in a private mount namespace where tree/opt/lbd is /opt/lbd."""
    script = 'mount -t tmpfs lbd-test /opt && mkdir /opt/lbd && mount --bind "$1/opt/lbd" /opt/lbd && shift && exec "$@"'
    return _run("unshare", "--mount", "--propagation", "private", "sh", "-ec", script, "sh", tree, *argv,
                env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"), cwd="/")


def test_venv_imports_lbd_and_the_locked_versions_at_opt_lbd(unpacked):
    assert _at_opt_lbd(unpacked, "/opt/lbd/venv/bin/lbd", "--version").stdout.strip() == f"lbd {_version()}"
    config = unpacked / "etc/lbd/lbd.yaml"
    _at_opt_lbd(unpacked, "/opt/lbd/venv/bin/lbd", "check", str(config))
    probe = textwrap.dedent("""\
        import importlib.metadata, json, pkgutil, sys
        import bcc, lbd, lbd.dataplane._maglev
        site = [p for p in sys.path if p.startswith('/opt/lbd/venv/lib/')]
        for info in pkgutil.walk_packages(lbd.__path__, 'lbd.'):  # every module the wheel has
            __import__(info.name)
        print(json.dumps({
            'lbd': lbd.__file__, 'bcc': bcc.__file__,
            'dists': {d.metadata['Name']: d.version for d in importlib.metadata.distributions(path=site)},
            'modules': {n: getattr(sys.modules[n], '__file__', None) for n in
                        ('yaml', 'numpy', 'pydantic', 'aiohttp', 'pyroute2', 'uvloop', 'prometheus_client')},
        }))
    """)
    found = json.loads(_at_opt_lbd(unpacked, "/opt/lbd/venv/bin/python", "-c",
                                   "import lbd.config, numpy, pydantic, aiohttp, pyroute2, uvloop, "
                                   "prometheus_client, yaml\n" + probe).stdout)
    assert found["lbd"].startswith("/opt/lbd/venv/lib/python3.11/site-packages/lbd/"), found
    assert found["bcc"].startswith("/usr/lib/python3/dist-packages/"), found  # Debian's bcc
    for name, path in found["modules"].items():  # lbd's dependencies are the venv's own
        assert path.startswith("/opt/lbd/venv/"), (name, path)
    pins = _build_module().lock_blocks(DEBIAN / "requirements.lock")
    installed = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in found["dists"].items()}
    assert installed == {**pins, "lbd": _version()}


def test_lintian_reports_no_errors(deb):
    if not shutil.which("lintian"):
        pytest.fail("lintian missing: apt-get install lintian (hostsetup.DEB_PACKAGES)", pytrace=False)
    result = _run("lintian", "--fail-on", "error", deb, check=False, timeout=600)
    print(result.stdout)
    assert result.returncode == 0 and not re.search(r"^E: ", result.stdout, flags=re.M), \
        result.stdout + result.stderr


# --- installed into a scratch root ------------------------------------------------

class ScratchRoot:
    def __init__(self, path: Path):
        self.path = path
        for sub in ("var/lib/dpkg/info", "var/lib/dpkg/updates"):
            (path / sub).mkdir(parents=True)
        (path / "var/lib/dpkg/status").touch()

    def dpkg(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        # chrootless: the scripts run on this host's /bin/sh with DPKG_ROOT set;
        # the scratch root has none of the Depends installed
        return _run("dpkg", f"--root={self.path}", "--force-script-chrootless", "--force-depends",
                    *args, check=check, timeout=300, stdin=subprocess.DEVNULL)

    def status(self) -> str:
        return _run("dpkg-query", f"--admindir={self.path}/var/lib/dpkg", "-W", "-f=${Status} ${Version}",
                    "lbd", check=False).stdout

    def __truediv__(self, rel: str) -> Path:
        return self.path / rel.lstrip("/")


def _repack(deb: Path, work: Path, version: str, config_line: str) -> Path:
    """The same package as a newer version whose /etc/lbd/lbd.yaml changed."""
    tree = work / "repack"
    _run("dpkg-deb", "-R", deb, tree)
    control = tree / "DEBIAN/control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.M))
    (tree / "etc/lbd/lbd.yaml").write_text((tree / "etc/lbd/lbd.yaml").read_text() + config_line)
    out = work / f"lbd_{version}.deb"
    _run("dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", tree, out, timeout=300)
    shutil.rmtree(tree)
    return out


def test_install_upgrade_keeps_conffiles_remove_purge_in_a_scratch_root(deb, tmp_path, host_before):
    root = ScratchRoot(tmp_path / "root")
    root.dpkg("-i", deb)
    assert root.status() == f"install ok installed {_version()}"
    config, env = root / "/etc/lbd/lbd.yaml", root / "/etc/default/lbd"
    assert config.read_bytes() == (ROOT / "configs/lbd.yaml").read_bytes()
    for unit in UNITS:
        assert (root / "lib/systemd/system" / unit).exists()
        # postinst recorded what enabling would link (a purge removes those links)
        assert (root / f"var/lib/systemd/deb-systemd-helper-enabled/{unit}.dsh-also").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/lbd.service").exists()  # not enabled
    conffiles = _run("dpkg-query", f"--admindir={root.path}/var/lib/dpkg", "-W", "-f=${Conffiles}", "lbd").stdout
    assert sorted(line.split()[0] for line in conffiles.strip().splitlines()) == sorted(CONFFILES)
    site = root / "opt/lbd/venv/lib/python3.11/site-packages"
    assert list((site / "lbd/__pycache__").glob("cli.*.pyc")), "postinst compiled no byte-code"

    # The operator edits both conffiles; a packaged file gets damaged.
    config.write_text(config.read_text() + "# the operator's change\n")
    env.write_text(env.read_text() + "LBD_ARGS=--log-level DEBUG\n")
    edited = config.read_text(), env.read_text()
    cli = site / "lbd/cli.py"
    cli.write_text("raise SystemExit('damaged')\n")

    # Reinstall over itself (prerm upgrade, postinst configure <same version>).
    root.dpkg("-i", deb)
    assert (config.read_text(), env.read_text()) == edited
    assert "damaged" not in cli.read_text()  # the package's files are the package's again
    assert not list((root / "etc").rglob("*.dpkg-*"))

    # A newer version whose packaged lbd.yaml changed too: the operator's file
    # stays (--force-confold, as `apt-get -o Dpkg::Options::=--force-confold`;
    # without it dpkg asks), the package's lands beside it as .dpkg-dist.
    newer = _repack(deb, tmp_path, f"{_version()}+test1", "# the package's change\n")
    root.dpkg("--force-confold", "-i", newer)
    assert root.status() == f"install ok installed {_version()}+test1"
    assert (config.read_text(), env.read_text()) == edited
    assert (root / "etc/lbd/lbd.yaml.dpkg-dist").read_text().endswith("# the package's change\n")
    assert not (root / "etc/default/lbd.dpkg-dist").exists()  # unchanged in the package: kept silently

    # Remove: everything but the conffiles goes (prerm removed the byte-code,
    # so no directory is left behind); the units are masked.
    root.dpkg("-r", "lbd")
    assert root.status().startswith("deinstall ok config-files")
    assert not (root / "opt/lbd").exists() and not (root / "usr/bin/lbd").is_symlink()
    assert not (root / "lib/systemd/system/lbd.service").exists()
    assert (config.read_text(), env.read_text()) == edited
    assert os.readlink(root / "etc/systemd/system/lbd.service") == "/dev/null"

    # Purge: /etc/lbd (the .dpkg-dist and anything else there too), /var/lib/lbd, the masks.
    (root / "var/lib/lbd").mkdir(parents=True)
    (root / "var/lib/lbd/maintenance").write_text("drained\n")
    root.dpkg("-P", "lbd")
    assert root.status() == ""
    for gone in ("etc/lbd", "etc/default/lbd", "var/lib/lbd", "etc/systemd/system/lbd.service",
                 "var/lib/systemd/deb-systemd-helper-enabled/lbd.service.dsh-also"):
        assert not (root / gone).exists() and not (root / gone).is_symlink(), gone

    assert _host_state() == host_before, "the package changed the host, not only the scratch root"


# --- the maintainer scripts' systemd side -------------------------------------------

FAKE = """\
#!/bin/sh
echo "$(basename "$0") $*" >> "$FAKE_LOG"
case "$(basename "$0") $*" in
    "deb-systemd-helper debian-installed "*|"deb-systemd-helper --quiet was-enabled "*) exit "${FAKE_WAS_INSTALLED:-1}";;
esac
exit 0
"""

NAMESPACE = """\
set -e
# a booted host's view, private: the scripts' writes land in tmpfs
for dir in /etc /opt /var/lib; do
    up=$(mktemp -d -p "$SCRATCH")
    mkdir "$up/u" "$up/w"
    mount -t overlay -o "lowerdir=$dir,upperdir=$up/u,workdir=$up/w" lbd-test "$dir"
done
mount -t tmpfs lbd-test /run
[ "$SYSTEMD" = yes ] && mkdir -p /run/systemd/system
mkdir -p /opt/lbd/venv/bin /etc/lbd /var/lib/lbd /run/lbd
cp "$FAKES/fake" /opt/lbd/venv/bin/python
cp "$FAKES/fake" /opt/lbd/venv/bin/lbd
mkdir -p /opt/lbd/venv/lib/__pycache__
printf 'LBD_CONFIG=/etc/lbd/edge.yaml\\nLBD_ARGS=\\n' > /etc/default/lbd
touch /etc/lbd/edge.yaml /var/lib/lbd/maintenance
PATH="$FAKES/bin:$PATH" "$@"
# what is left, for the test to read
for path in /etc/lbd /var/lib/lbd /run/lbd /opt/lbd/venv /opt/lbd/venv/lib/__pycache__ \
            /opt/lbd/venv.make-install/bin/lbd; do
    [ -e "$path" ] && echo "present $path" >> "$FAKE_LOG"
done
exit 0
"""


@pytest.fixture
def maintainer_script(unpacked, tmp_path):
    fakes = tmp_path / "fakes"
    (fakes / "bin").mkdir(parents=True)
    (fakes / "fake").write_text(FAKE)
    (fakes / "fake").chmod(0o755)
    for tool in ("systemctl", "deb-systemd-invoke", "deb-systemd-helper"):
        (fakes / "bin" / tool).symlink_to(fakes / "fake")
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def run(script: str, *args: str, systemd: bool = True, **env: str) -> list[str]:
        log = tmp_path / "calls.log"
        log.write_text("")
        _run("unshare", "--mount", "--propagation", "private", "sh", "-c", NAMESPACE, "sh",
             unpacked / "DEBIAN" / script, *args,
             env={"PATH": os.environ["PATH"], "FAKE_LOG": str(log), "FAKES": str(fakes),
                  "SCRATCH": str(scratch), "SYSTEMD": "yes" if systemd else "no", **env})
        return log.read_text().splitlines()
    return run


def _service_calls(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith(("systemctl", "deb-systemd-invoke", "lbd "))]


def test_scripts_on_install_never_start_and_on_upgrade_restart_a_running_lbd(maintainer_script):
    calls = maintainer_script("postinst", "configure")  # a first install
    assert _service_calls(calls) == ["systemctl --system daemon-reload"], calls
    assert "deb-systemd-helper update-state lbd.service lbd-bird.service" in calls
    assert not [c for c in calls if c.startswith("deb-systemd-helper enable")], calls
    assert any(c.startswith("python -m compileall") for c in calls), calls
    assert "python -m lbd.hostsetup check" in calls  # what the host lacks, said at once

    calls = maintainer_script("postinst", "configure", "0.0.9")  # an upgrade from 0.0.9
    # only a running lbd restarts (hitless: the datapath is pinned); BIRD keeps its sessions
    assert _service_calls(calls) == ["systemctl --system daemon-reload",
                                     "deb-systemd-invoke try-restart lbd.service"], calls

    # enabled before a remove and reinstalled: enabled again
    calls = maintainer_script("postinst", "configure", "0.0.9", FAKE_WAS_INSTALLED="0")
    assert "deb-systemd-helper unmask lbd.service lbd-bird.service" in calls
    assert "deb-systemd-helper enable lbd.service lbd-bird.service" in calls

    calls = maintainer_script("prerm", "upgrade", "0.2.0")  # nothing stops on an upgrade
    assert _service_calls(calls) == [], calls
    assert "present /opt/lbd/venv/lib/__pycache__" not in calls  # byte-code removed


def test_first_install_moves_a_make_install_venv_aside(maintainer_script):
    calls = maintainer_script("preinst", "install")  # the namespace has a venv at /opt/lbd/venv
    assert "present /opt/lbd/venv.make-install/bin/lbd" in calls and "present /opt/lbd/venv" not in calls
    calls = maintainer_script("preinst", "upgrade", "0.0.9")  # the package's own: left alone
    assert "present /opt/lbd/venv" in calls and not [c for c in calls if "make-install" in c], calls


def test_scripts_on_remove_stop_lbd_and_tear_the_datapath_down_purge_removes_the_rest(maintainer_script):
    calls = maintainer_script("prerm", "remove")
    # the config lbd.service runs (LBD_CONFIG from /etc/default/lbd)
    assert _service_calls(calls) == ["deb-systemd-invoke stop lbd.service",
                                     "lbd --teardown --config /etc/lbd/edge.yaml",
                                     "deb-systemd-invoke stop lbd-bird.service"], calls

    calls = maintainer_script("postrm", "remove")
    assert _service_calls(calls) == ["systemctl --system daemon-reload"], calls
    assert "deb-systemd-helper mask lbd.service lbd-bird.service" in calls
    assert "present /etc/lbd" in calls and "present /var/lib/lbd" in calls  # kept on remove

    calls = maintainer_script("postrm", "purge")
    assert "deb-systemd-helper purge lbd.service lbd-bird.service" in calls
    for path in ("/etc/lbd", "/var/lib/lbd", "/run/lbd"):
        assert f"present {path}" not in calls, calls


def test_scripts_leave_the_running_system_alone_without_systemd_or_under_dpkg_root(maintainer_script, tmp_path):
    for script, args in (("postinst", ("configure", "0.0.9")), ("prerm", ("remove",)),
                         ("postrm", ("remove",))):
        assert _service_calls(maintainer_script(script, *args, systemd=False)) == [], script
        assert _service_calls(maintainer_script(script, *args, DPKG_ROOT=str(tmp_path / "elsewhere"))) == [], \
            script
