"""`lbd`: run the daemon, check a config, or tear the datapath down.

  lbd --config /etc/lbd/lbd.yaml     run (under systemd: Type=notify)
  lbd check FILE...                  validate, touch nothing
  lbd check --diff FILE              what a reload of FILE would move, per VIP
  lbd --teardown [--config FILE]     withdraw from BGP, detach from the interfaces, unpin everything
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
                        help="detach the program from the configured interfaces and unpin everything")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--version", action="version", version=f"lbd {__version__}")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.teardown:
        from lbd.config import load_config
        from lbd.daemon import teardown
        for line in teardown(load_config(args.config)):
            print(line)
        return 0
    return run(args.config)


if __name__ == "__main__":
    sys.exit(main())
