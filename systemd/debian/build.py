#!/usr/bin/python3
"""Build the Debian package lbd_<version>_<arch>.deb (`make deb`), and refresh
its pinned Python dependencies (`make deb-lock`).

    /usr/bin/python3 systemd/debian/build.py [--out DIR] [--keep] [--no-lintian]
    /usr/bin/python3 systemd/debian/build.py lock

Why the packaging lives in systemd/debian/: the package exists to install and
drive the units beside it (lbd.service, lbd-bird.service, lbd.env as
/etc/default/lbd): its maintainer scripts reload systemd, restart lbd.service
on upgrade and stop it on removal. The repository's top level is fixed, so
there is no debian/ directory there (and this is not a Debian source
package: the .deb is assembled here and built with dpkg-deb).

What the package holds:

    /opt/lbd/venv             lbd in its own venv (python3 -m venv --system-site-packages,
                              so it sees Debian's bcc), with every Python dependency pinned
                              by requirements.lock: installing the package needs no network
    /opt/lbd/README.md        the units' Documentation=
    /opt/lbd/docs/*.md        the rest of the documentation (README.md links into it)
    /usr/bin/{lbd,lbctl,lbd-backend} -> /opt/lbd/venv/bin/...
    /lib/systemd/system/{lbd,lbd-bird}.service
    /lib/systemd/system/lbd-backend.service, lbd-backend-metrics.{service,timer}
                              for backends; enabled by nobody
                              but the operator (the maintainer scripts leave them alone)
    /etc/lbd/lbd.yaml         conffile, from configs/lbd.yaml
    /etc/default/lbd          conffile, from systemd/lbd.env
    /usr/share/man/man1/      lbd.1, lbctl.1, lbd-backend.1 (from each command's --help)
    /usr/share/doc/lbd/       copyright, changelog
    /usr/share/lintian/overrides/lbd

Depends: lbd/hostsetup.py's RUNTIME_PACKAGES, read here at build time (the
list `make install` and the Dockerfile install), then what the venv itself
needs beyond them: the python3 minor version it is built for (its C
extensions and lib/python3.X are for that one), and the shared libraries
the wheels' extensions link (dpkg-shlibdeps: libc6, libstdc++6, ...).

The venv is built at its final path. A venv is not relocatable: its bin/
scripts' shebangs, pyvenv.cfg, the paths pip records and every .pyc name
the directory they were made in. Rather than rewrite those afterwards (and
miss one), the venv is made in a private mount namespace (unshare -m) where
the staging directory is bind-mounted at /opt/lbd, above an overlay of the
host's /opt: inside, everything is made at /opt/lbd/venv; outside, nothing
under /opt changes, and a host that runs lbd from `make install` keeps its
/opt/lbd. As root that needs nothing else; as another user, unshare maps it
to root in a user namespace.

The build steps: a throwaway build venv gets the pinned build backend
(build-requirements.lock: setuptools, wheel) and builds lbd's wheel from a
copy of the checkout (the working tree as it is, like `make install`; the
copy keeps build/ and *.egg-info out of it); then, in the namespace, the
package's venv (--without-pip: dpkg owns every file in it, so nothing should
pip-install there) is filled by the build venv's pip (pip --python) with the
locked requirements (--require-hashes, --no-deps, --ignore-installed so each
lives in the venv, not in whatever the build host's /usr/lib/python3 has)
and the wheel. No byte-code is shipped: postinst compiles the venv (as
Debian's python3 packages do) and prerm removes what it wrote. The wheels'
files are installed byte for byte (pip's RECORD has their hashes; strip
could break the ELF files auditwheel patched): lintian-overrides says which
of lintian's tags follow from that. lbd's own extension is built with
Debian's hardening flags (dpkg-buildflags) and linked stripped.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LOCK = HERE / "requirements.lock"
BUILD_LOCK = HERE / "build-requirements.lock"
PREFIX = Path("/opt/lbd")
VENV = PREFIX / "venv"
COMMANDS = ("lbd", "lbctl", "lbd-backend")
UNITS = ("lbd.service", "lbd-bird.service", "lbd-backend.service", "lbd-backend-metrics.service",
         "lbd-backend-metrics.timer")
# Where each of the conffiles (systemd/debian/conffiles) comes from.
CONFFILE_SOURCES = {"/etc/lbd/lbd.yaml": "configs/lbd.yaml", "/etc/default/lbd": "systemd/lbd.env"}
MAINTAINER_SCRIPTS = ("preinst", "postinst", "prerm", "postrm")
# pip-tools, only for `build.py lock` (never at package build time).
PIP_TOOLS = "pip-tools==7.6.2"

sys.path.insert(0, str(ROOT))
from lbd import hostsetup  # noqa: E402  (standard library only: runs before any venv exists


STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"build-deb [{time.monotonic() - STARTED:5.1f}s]: {message}", flush=True)


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=True, **kwargs)


def version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def python_depends() -> list[str]:
    """The venv's interpreter: /usr/bin/python3 of this minor version, no other
    (the wheels' C extensions and the venv's lib/python3.X are for it)."""
    major, minor = sys.version_info[:2]
    return [f"python3 (>= {major}.{minor}~)", f"python3 (<< {major}.{minor + 1})"]


def depends(shlibs: list[str]) -> list[str]:
    """The Depends field, entry by entry: hostsetup's runtime packages (as
    `make install` installs them), then the interpreter the venv is bound
    to, then the shared libraries its binaries link (dpkg-shlibdeps)."""
    return list(hostsetup.RUNTIME_PACKAGES) + python_depends() + shlibs


def shlibs_depends(stage: Path, work: Path) -> list[str]:
    """dpkg-shlibdeps over every ELF file of the venv (the libraries numpy's
    wheel bundles resolve inside it)."""
    def is_elf(path: Path) -> bool:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    elves = sorted(p for p in (stage / "opt").rglob("*") if p.is_file() and not p.is_symlink() and is_elf(p))
    libdirs = sorted({str(p.parent.relative_to(work)) for p in elves if ".libs" in p.parent.name})
    (work / "debian").mkdir(exist_ok=True)
    (work / "debian/control").write_text("Source: lbd\n\nPackage: lbd\nArchitecture: any\n")
    result = subprocess.run(["dpkg-shlibdeps", "-O", "--warnings=0", *(f"-l{d}" for d in libdirs),
                             *(f"-e{e.relative_to(work)}" for e in elves)],
                            cwd=work, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"build-deb: dpkg-shlibdeps failed:\n{result.stderr}")
    found = re.search(r"^shlibs:Depends=(.*)$", result.stdout, flags=re.M)
    return [d.strip() for d in found.group(1).split(",")] if found else []


def source_date_epoch() -> int:
    """The last commit's time (reproducible timestamps), else now."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    result = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%ct"],
                            capture_output=True, text=True, check=False)
    return int(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else int(time.time())


def maintainer() -> str:
    """DEBFULLNAME/DEBEMAIL as Debian's tools read them, else git's user."""
    name = os.environ.get("DEBFULLNAME")
    mail = os.environ.get("DEBEMAIL")
    for key, value in (("user.name", name), ("user.email", mail)):
        if not value:
            got = subprocess.run(["git", "-C", str(ROOT), "config", key], capture_output=True, text=True,
                                 check=False).stdout.strip()
            if key == "user.name":
                name = got
            else:
                mail = got
    return f"{name or 'lbd maintainers'} <{mail or 'root@localhost.localdomain'}>"


# --- the requirements -----------------------------------------------------------

def uncommented(path: Path) -> str:
    """A template of this directory without its # lines."""
    return "".join(line + "\n" for line in path.read_text().splitlines() if not line.startswith("#"))


def conffiles() -> list[str]:
    listed = uncommented(HERE / "conffiles").split()
    assert sorted(listed) == sorted(CONFFILE_SOURCES), (listed, CONFFILE_SOURCES)
    return listed


def lock_blocks(path: Path) -> dict[str, str]:
    """name -> pinned version of a pip-compile --generate-hashes file."""
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match:
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return pins


LOCK_HEADER = """\
# The Python packages in the Debian package's venv (/opt/lbd/venv), each at
# one version with the sha256 of every file PyPI has for it (all platforms,
# so an arm64 build checks too). systemd/debian/build.py installs exactly
# these with pip --require-hashes --no-deps --ignore-installed.
#
# Regenerate (after changing [project] dependencies in pyproject.toml, or to
# take newer versions) in the checkout, with PyPI reachable:
#
#     make venv        # the versions come from the dev venv where it has them
#     make deb-lock    # = /usr/bin/python3 systemd/debian/build.py lock
#
# which runs pip-compile (pip-tools, in a throwaway venv) on pyproject.toml
# with --generate-hashes against PyPI alone (no local pip configuration),
# constrained by `.venv/bin/pip freeze --local` (what the dev venv installed
# itself, so what the tests ran; packages it takes from Debian, like PyYAML,
# resolve to PyPI's newest). build-requirements.lock (the build backend) is
# made by the same command with --only-build-deps. Review the diff.
"""


def lock_command(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="lbd-deb-lock.", dir="/var/tmp"))
    try:
        src = copy_source(work)
        freeze = ROOT / ".venv" / "bin" / "pip"
        constraints = src / "venv-freeze.txt"
        if freeze.exists():
            result = run(freeze, "freeze", "--local", "--exclude-editable", capture_output=True, text=True)
            constraints.write_text(result.stdout)
        else:
            log("no .venv (make venv): resolving without its versions")
            constraints.write_text("")
        tools = work / "pip-tools"
        run("/usr/bin/python3", "-m", "venv", tools)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull  # PyPI's files and hashes, not a local mirror's
        run(tools / "bin/pip", "install", "-q", PIP_TOOLS, env=env)
        common = ["--quiet", "--generate-hashes", "--allow-unsafe", "--strip-extras", "--no-emit-index-url",
                  "-c", constraints.name]
        env["CUSTOM_COMPILE_COMMAND"] = "make deb-lock"  # the command the files' header names
        for out, extra in ((LOCK, []), (BUILD_LOCK, ["--only-build-deps", "--build-deps-for", "wheel"])):
            target = src / out.name
            if out.exists():  # keep the current pins unless the inputs changed
                target.write_text(_strip_header(out.read_text()))
            run(tools / "bin/pip-compile", *common, *extra, "--output-file", target.name, "pyproject.toml",
                cwd=src, env=env)
            out.write_text(LOCK_HEADER + target.read_text())
            log(f"wrote {out.relative_to(ROOT)} ({len(lock_blocks(out))} packages)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _strip_header(text: str) -> str:
    return text[len(LOCK_HEADER):] if text.startswith(LOCK_HEADER) else text


# --- building -------------------------------------------------------------------

def copy_source(work: Path) -> Path:
    """What building lbd's wheel reads, copied out of the working tree."""
    src = work / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("lbd", "xdp"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    return src


def check_tools() -> None:
    """What building needs: the runtime packages (python3-venv, python3-dev and
    gcc build the venv; python3-bpfcc is checked from it) and hostsetup's
    packaging tools. Installed if missing, as root."""
    needed = hostsetup.RUNTIME_PACKAGES + hostsetup.DEB_PACKAGES
    missing = hostsetup._missing_packages(needed)
    if missing and os.geteuid() == 0:
        hostsetup.install_packages(missing)
    elif missing:
        raise SystemExit(f"build-deb: missing Debian packages: {' '.join(missing)} "
                         f"(as root: python3 -m lbd.hostsetup install, or apt-get install them)")
    if not shutil.which("unshare"):
        raise SystemExit("build-deb: unshare missing (util-linux)")


NAMESPACE = r"""
set -eu
stage=$1; scratch=$2; shift 2
# Private from here on (unshare --propagation private): the host sees none of it.
mount -t tmpfs -o mode=0700 lbd-deb-build "$scratch"
mkdir "$scratch/upper" "$scratch/work"
mount -t overlay -o "lowerdir=/opt,upperdir=$scratch/upper,workdir=$scratch/work" lbd-deb-build /opt
mkdir -p /opt/lbd
mount --bind "$stage" /opt/lbd
exec "$@"
"""


def in_private_opt(stage_prefix: Path, scratch: Path, *argv) -> None:
    """Run argv with stage_prefix mounted at /opt/lbd, in a private mount namespace."""
    cmd = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        cmd.insert(1, "--map-root-user")
    scratch.mkdir()
    run(*cmd, "/bin/sh", "-c", NAMESPACE, "sh", stage_prefix, scratch, *argv)


def fill_venv(work: Path) -> None:
    """Inside the namespace: /opt/lbd/venv from the lock and lbd's wheel."""
    assert os.path.ismount(PREFIX), "not in build.py's mount namespace"
    run("/usr/bin/python3", "-m", "venv", "--system-site-packages", "--without-pip", VENV)
    pip = [work / "buildenv/bin/python", "-m", "pip", "--python", VENV / "bin/python", "install",
           "-qq", "--no-deps", "--no-compile", "--no-warn-script-location", "--disable-pip-version-check"]
    run(*pip, "--require-hashes", "--ignore-installed", "--only-binary", ":all:", "-r", LOCK)
    wheel = next((work / "dist").glob("lbd-*.whl"))
    run(*pip, "--no-index", wheel)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    # The installed commands through their shebangs, and lbd with bcc and its
    # dependencies from the venv (not from the build host's /usr/lib/python3).
    run(VENV / "bin/lbd", "--version", env=env, cwd="/")
    run(VENV / "bin/python", "-c",
        "import bcc, yaml, numpy, lbd, lbd.dataplane._maglev, pkgutil, sys; "
        "assert all(m.__file__.startswith('/opt/lbd/venv/') for m in (yaml, numpy, lbd)), sys.modules; "
        "[__import__(m.name) for m in pkgutil.walk_packages(lbd.__path__, 'lbd.')]",  # every module imports
        env=env, cwd="/")
    mandir = work / "man"
    mandir.mkdir()
    for command in COMMANDS:
        text = run(VENV / "bin" / command, "--help", env=env, cwd="/", capture_output=True, text=True).stdout
        (mandir / f"{command}.1").write_text(manpage(command, text))


def manpage(command: str, help_text: str) -> str:
    """A man page from argparse's --help: NAME, the help as it is, SEE ALSO."""
    summary = {
        "lbd": "XDP layer-4 load balancer daemon",
        "lbctl": "query and control a running lbd",
        "lbd-backend": "prepare a host to be an lbd backend",
    }[command]

    def esc(line: str) -> str:
        line = line.replace("\\", "\\e")
        return ("\\&" + line) if line.startswith((".", "'")) else line
    body = "\n".join(esc(line) for line in help_text.rstrip().splitlines())
    return (f'.TH {command.upper()} 1 "" "lbd {version()}" "lbd"\n'
            f".SH NAME\n{command} \\- {summary}\n"
            f".SH SYNOPSIS AND OPTIONS\n.nf\n{body}\n.fi\n"
            ".SH SEE ALSO\n"
            "/opt/lbd/README.md, /opt/lbd/docs/operating.md (operating lbd: the units, reload, upgrade, teardown),\n"
            ".BR systemctl (1)\n")


def build_flags() -> dict[str, str]:
    """Debian's compiler flags (dpkg-buildflags: hardening) for lbd's C
    extension, linked stripped (the wheel's RECORD then has the file as shipped)."""
    env = dict(os.environ)
    flags_env = dict(os.environ, DEB_BUILD_MAINT_OPTIONS="hardening=+all")
    for name in ("CFLAGS", "CPPFLAGS", "LDFLAGS"):
        env[name] = subprocess.run(["dpkg-buildflags", "--get", name], capture_output=True, text=True,
                                   check=True, env=flags_env).stdout.strip()
    env["LDFLAGS"] += " -Wl,--strip-all"
    return env


def stage_files(stage: Path, work: Path) -> None:
    doc = stage / "usr/share/doc/lbd"
    for path in (stage / "lib/systemd/system", stage / "usr/bin", stage / "usr/share/man/man1", doc,
                 stage / "usr/share/lintian/overrides", stage / "etc/lbd", stage / "etc/default"):
        path.mkdir(parents=True, exist_ok=True)
    for unit in UNITS:
        install(ROOT / "systemd" / unit, stage / "lib/systemd/system" / unit)
    for command in COMMANDS:
        (stage / "usr/bin" / command).symlink_to(VENV / "bin" / command)
        with gzip.GzipFile(stage / f"usr/share/man/man1/{command}.1.gz", "wb", 9, mtime=0) as out:
            out.write((work / "man" / f"{command}.1").read_bytes())
    for target in conffiles():
        install(ROOT / CONFFILE_SOURCES[target], stage / target.lstrip("/"))
    install(ROOT / "README.md", stage / "opt/lbd/README.md")
    for page in sorted((ROOT / "docs").glob("*.md")):
        install(page, stage / "opt/lbd/docs" / page.name)
    (doc / "copyright").write_text((HERE / "copyright").read_text().replace("@YEARS@", copyright_years()))
    install(HERE / "lintian-overrides", stage / "usr/share/lintian/overrides/lbd")
    with gzip.GzipFile(doc / "changelog.gz", "wb", 9, mtime=0) as out:
        out.write(changelog().encode())


def install(source: Path, target: Path, mode: int = 0o644) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)


def copyright_years() -> str:
    result = subprocess.run(["git", "-C", str(ROOT), "log", "--reverse", "--format=%cd", "--date=format:%Y"],
                            capture_output=True, text=True, check=False)
    last = time.strftime("%Y", time.gmtime(source_date_epoch()))
    first = result.stdout.split()[0] if result.returncode == 0 and result.stdout.split() else last
    return first if first == last else f"{first}-{last}"


def changelog() -> str:
    described = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                               capture_output=True, text=True, check=False).stdout.strip() or "unknown"
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(source_date_epoch()))
    return (f"lbd ({version()}) unstable; urgency=medium\n\n"
            f"  * Built from the lbd repository at {described} (README.md has what changed).\n\n"
            f" -- {maintainer()}  {date}\n")


def clean_venv(stage: Path) -> None:
    """No byte-code (postinst writes it), and nothing that names the build."""
    venv = stage / VENV.relative_to("/")
    for cache in list(venv.rglob("__pycache__")):
        shutil.rmtree(cache)
    for pyc in venv.rglob("*.pyc"):
        pyc.unlink()
    # pip records where a local wheel came from (a path in the build's work dir)
    for direct in venv.glob("lib/python3*/site-packages/lbd-*.dist-info/direct_url.json"):
        record = direct.parent / "RECORD"
        record.write_text("".join(line for line in record.read_text().splitlines(keepends=True)
                                  if not line.startswith(f"{direct.parent.name}/direct_url.json,")))
        direct.unlink()
    # modes as Debian wants them: no group/other write; directories and
    # executables 0755, shared libraries (numpy.libs' come 0755) and the rest 0644
    for path in [venv, *venv.rglob("*")]:
        if path.is_symlink():
            continue
        shared_library = re.search(r"\.so(\.[0-9.]+)?$", path.name) and path.is_file()
        if path.is_dir() or (path.stat().st_mode & stat.S_IXUSR and not shared_library):
            path.chmod(0o755)
        else:
            path.chmod(0o644)


def control_files(stage: Path, control_dir: Path, shlibs: list[str]) -> None:
    listed = conffiles()
    (control_dir / "conffiles").write_text("".join(f"{c}\n" for c in listed))
    for script in MAINTAINER_SCRIPTS:
        install(HERE / script, control_dir / script, mode=0o755)
    template = uncommented(HERE / "control.in")
    fields = {
        "VERSION": version(),
        "ARCH": arch(),
        "MAINTAINER": maintainer(),
        "INSTALLED_SIZE": str(installed_size(stage)),
        "DEPENDS": ", ".join(depends(shlibs)),
    }
    text = re.sub(r"@([A-Z_]+)@", lambda m: fields[m.group(1)], template)
    (control_dir / "control").write_text(text)
    sums = []
    for path in sorted(stage.rglob("*")):
        rel = path.relative_to(stage)
        if rel.parts[0] == "DEBIAN" or path.is_symlink() or not path.is_file() or f"/{rel}" in listed:
            continue
        sums.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {rel}\n")
    (control_dir / "md5sums").write_text("".join(sums))
    for name in ("control", "conffiles", "md5sums"):
        (control_dir / name).chmod(0o644)


def installed_size(stage: Path) -> int:
    """KiB, counted as dpkg-gencontrol does: each file rounded up, 1 per
    directory and symlink."""
    total = 0
    for path in stage.rglob("*"):
        if path.is_symlink() or path.is_dir():
            total += 1
        else:
            total += (path.stat().st_size + 1023) // 1024
    return total


def lintian(deb: Path) -> None:
    if not shutil.which("lintian"):
        log("lintian not installed: not checked")
        return
    log("lintian")
    result = subprocess.run(["lintian", "--fail-on", "error", str(deb)], text=True, capture_output=True,
                            check=False)
    print(result.stdout + result.stderr, end="", flush=True)
    if result.returncode != 0:
        raise SystemExit(f"build-deb: lintian reports errors on {deb}")


def build_command(args: argparse.Namespace) -> int:
    started = time.monotonic()
    check_tools()
    name = f"lbd_{version()}_{arch()}.deb"
    out = Path(args.out).resolve() / name
    os.umask(0o022)
    work = Path(tempfile.mkdtemp(prefix="lbd-deb.", dir=args.workdir))
    work.chmod(0o755)
    try:
        stage = work / "root"
        (stage / PREFIX.relative_to("/")).mkdir(parents=True)
        src = copy_source(work)
        log("build venv and lbd's wheel")
        run("/usr/bin/python3", "-m", "venv", work / "buildenv")
        pip = [work / "buildenv/bin/python", "-m", "pip", "--disable-pip-version-check", "--quiet"]
        run(*pip, "install", "--require-hashes", "--no-deps", "--only-binary", ":all:", "-r", BUILD_LOCK)
        run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", work / "dist", src, env=build_flags())
        log(f"{VENV} (in a private mount namespace)")
        in_private_opt(stage / PREFIX.relative_to("/"), work / "ns",
                       "/usr/bin/python3", Path(__file__).resolve(), "_fill-venv", work)
        clean_venv(stage)
        stage_files(stage, work)
        (stage / "DEBIAN").mkdir(mode=0o755)  # dpkg-shlibdeps finds the package's tree by it
        control_files(stage, stage / "DEBIAN", shlibs_depends(stage, work))
        log(f"dpkg-deb --build {out}")
        out.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(source_date_epoch()))
        run("dpkg-deb", "--root-owner-group", "-Zxz", f"-z{args.xz_level}", "--build", stage, out, env=env,
            stdout=subprocess.DEVNULL)
        log(f"{out} ({out.stat().st_size / 1e6:.1f} MB, installed {installed_size(stage) / 1024:.0f} MiB) "
            f"in {time.monotonic() - started:.0f} s")
        if args.lintian:
            lintian(out)
        return 0
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["_fill-venv"]:  # build_command's step inside the namespace
        fill_venv(Path(argv[1]))
        return 0
    parser = argparse.ArgumentParser(prog="build.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", choices=("build", "lock"), default="build")
    parser.add_argument("--out", default=str(ROOT), help="where the .deb goes (default: the checkout)")
    parser.add_argument("--workdir", default="/var/tmp", help="where the staging tree is made")
    parser.add_argument("--keep", action="store_true", help="keep the staging tree")
    # xz -2: 21.7 MB in 13 s here; -6 (dpkg-deb's default) saves 2.6 MB and takes 8 times as long
    parser.add_argument("--xz-level", type=int, default=2, choices=range(10), metavar="0-9",
                        help="xz compression level of the .deb (default 2)")
    parser.add_argument("--no-lintian", dest="lintian", action="store_false", help="do not run lintian")
    args = parser.parse_args(argv)
    return lock_command(args) if args.command == "lock" else build_command(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
