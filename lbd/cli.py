"""`lbd`: run the daemon, check a config, or tear the datapath down.

  lbd --config /etc/lbd/lbd.yaml     run (under systemd: Type=notify)
  lbd check FILE...                  validate, touch nothing
  lbd check --diff FILE              what a reload of FILE would move, per VIP
  lbd --teardown [--config FILE] [--bpffs PATH]
                                     withdraw from BGP, detach lbd's program wherever it is
                                     attached, unpin everything (works with a broken or
                                     missing config: it needs only the pins)
  lbd bird-config [--config FILE] [--if-missing]
                                     write BIRD's config announcing nothing (lbd-bird.service
                                     runs it before BIRD starts, so a boot announces nothing
                                     until lbd says so)
  lbd --version
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import uvloop

from lbd import __version__, bird
from lbd.config import Config, ConfigError, load_config
from lbd.control_client import DEFAULT_CONFIG, call, quic_moved_text, second_found_text, socket_options, socket_path

DEFAULT_BPFFS = "/sys/fs/bpf/lbd"  # the config's default bpffs


def setup_logging(level: str = "INFO") -> None:
    # one line per event, level and key=value fields, to stderr (journald adds the time)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")


def run(config_path: str) -> int:
    from lbd.daemon import Daemon, StartupError  # the daemon's imports (bcc) only when running it

    try:
        config = load_config(config_path)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    async def main() -> None:
        await Daemon(config_path, config).run()

    try:
        # uvloop for our loop only, not as the global policy: pyroute2 runs its
        # own asyncio loops in worker threads, on netlink sockets uvloop lacks
        uvloop.run(main())
    except StartupError as err:
        logging.getLogger("lbd").error("%s", err)
        print(err, file=sys.stderr)
        return 1
    return 0


def bird_config(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lbd bird-config")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--if-missing", action="store_true",
                        help="leave an existing file alone (it holds what lbd announces now)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    if config.bgp is None:
        print(f"{args.config}: no bgp section; nothing to write", file=sys.stderr)
        return 1
    path = config.bgp.bird_config
    if args.if_missing and os.path.exists(path):
        print(f"{path}: kept (lbd's current announcements)")
        return 0
    bird.write(path, bird.render(config.bgp, (), args.config))
    print(f"{path}: written, announcing nothing until lbd decides")
    return 0


def teardown_command(config_path: str, bpffs: str | None) -> int:
    """`lbd --teardown`: from the pins under --bpffs, else the config's bpffs
    (read from the YAML even if the file is otherwise invalid), else the
    default; with a readable bgp section, withdraw first."""
    from lbd.config import Bgp, raw_setting, read_raw
    from lbd.teardown import teardown

    bgp = None
    try:
        config = load_config(config_path)
        found, bgp = config.bpffs, config.bgp
    except ConfigError as err:
        raw = read_raw(config_path)
        found = raw_setting(raw, "bpffs")
        found = found if isinstance(found, str) and found.startswith("/") else None
        if raw_setting(raw, "bgp") is not None:
            try:
                bgp = Bgp.model_validate(raw_setting(raw, "bgp"))
            except ValueError:
                print(f"lbd --teardown: the bgp section of {config_path} is not valid: nothing withdrawn "
                      "from BGP", file=sys.stderr)
        first = str(err).splitlines()[0]
        print(f"lbd --teardown: {config_path} is not a valid config ({first}); "
              f"going by the pins under {bpffs or found or DEFAULT_BPFFS}", file=sys.stderr)
    for line in teardown(bpffs or found or DEFAULT_BPFFS, bgp):
        print(line)
    return 0


# --- lbd check -------------------------------------------------------------------
def check_files(paths: list[str]) -> int:
    """`lbd check FILE...`: 0 if every file is valid, else 1 (problems on stderr)."""
    if not paths:
        print("usage: lbd check FILE...", file=sys.stderr)
        return 1
    status = 0
    for path in paths:
        try:
            config = load_config(path)
        except ConfigError as err:
            print(err, file=sys.stderr)
            status = 1
        else:
            bgp_note = _bird_accepts(path, config)
            if bgp_note is None:
                status = 1
                continue
            print(f"{path}: OK ({len(config.vips)} VIPs, {config.backend_count} backends{bgp_note})")
    return status


def _bird_accepts(path: str, config: Config) -> str | None:
    """With a bgp section, BIRD's own parser checks the config lbd renders
    from it: "" or a note for the OK line, None (and the message) if BIRD refuses."""
    if config.bgp is None:
        return ""
    problem = bird.parse_check(config.bgp, [vip.address for vip in config.vips if vip.announce])
    if problem == "":
        return "; bird not installed, BGP section not checked by BIRD"
    if problem:
        print(f"{path}: bgp: BIRD refuses the config lbd renders from it: {problem}", file=sys.stderr)
        return None
    return f"; BGP: {len(config.bgp.peers)} peers, BIRD accepts the config"


def check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+")
    parser.add_argument("--diff", action="store_true", help="show what a reload would move (asks lbd)")


def check_command(argv: list[str]) -> int:
    """`lbd check`: parse its arguments (--socket/--config before or after the files)."""
    parser = argparse.ArgumentParser(prog="lbd check", description="validate config files",
                                     parents=[socket_options()])
    check_arguments(parser)
    return run_check(parser.parse_args(argv))


def run_check(args: argparse.Namespace) -> int:
    """Validate the files; with --diff, ask the running daemon what a reload
    of the first one would move (also `lbctl check`)."""
    result = check_files(args.files)
    if result != 0 or not args.diff:
        return result
    status, body = call(socket_path(args), "POST", "/diff", {"path": os.path.abspath(args.files[0])})
    if status != 200:
        print(f"lbd check --diff: {body.get('error', body)}", file=sys.stderr)
        return 1
    if body["refused"]:
        print(f"a reload would be REFUSED: boot-only settings changed: {', '.join(body['refused'])}")
    for vip in body["vips"]:
        print(f"{vip['name']}: {vip['action']}, {vip['moved_share'] * 100:.2f}% of flows would move"
              f"{second_found_text(vip)}{quic_moved_text(vip)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "check":
        return check_command(argv[1:])
    if argv and argv[0] == "bird-config":
        return bird_config(argv[1:])
    parser = argparse.ArgumentParser(prog="lbd", description="XDP layer-4 load balancer daemon")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    parser.add_argument("--teardown", action="store_true",
                        help="withdraw from BGP, detach lbd's program wherever it is attached, unpin everything")
    parser.add_argument("--bpffs", metavar="PATH",
                        help=f"with --teardown: the pins' directory (default: the config's bpffs, "
                             f"else {DEFAULT_BPFFS})")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--version", action="version", version=f"lbd {__version__}")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.teardown:
        return teardown_command(args.config, args.bpffs)
    return run(args.config)


if __name__ == "__main__":
    sys.exit(main())
