"""lbd: an XDP layer-4 load balancer (Maglev hashing, client affinity, DSR and IP-in-IP).

The folders are the layers (tests/unit/test_imports.py holds them to it):
  lbd/            the control plane and operator tools: the daemon, its config, health checks,
                  BGP, HTTP endpoints and metrics, lbctl;
  lbd/dataplane/  the program's Python side: layout, maps, tables and the Programmer;
  lbd/backend/    the lbd-backend agent that prepares backends;
  lbd/testing/    the namespace lab and the demo (not installed)."""
from importlib import metadata

try:
    __version__ = metadata.version("lbd")
except metadata.PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
