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
import sys

import uvloop

from lbd import __version__

DEFAULT_CONFIG = "/etc/lbd/lbd.yaml"
DEFAULT_BPFFS = "/sys/fs/bpf/lbd"  # the config's default bpffs


def setup_logging(level: str = "INFO") -> None:
    # one line per event, level and key=value fields, to stderr (journald adds the time)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")


def run(config_path: str) -> int:
    from lbd.config import ConfigError, load_config
    from lbd.daemon import Daemon, StartupError

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
    import os

    from lbd import bird
    from lbd.config import ConfigError, load_config

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
    from lbd.config import Bgp, ConfigError, load_config, raw_setting, read_raw
    from lbd.daemon import teardown

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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "check":
        from lbd.lbctl import check_command
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
