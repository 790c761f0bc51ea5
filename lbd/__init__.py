"""lbd: an XDP layer-4 load balancer (Maglev hashing, client affinity, DSR and IP-in-IP)."""
from importlib import metadata

try:
    __version__ = metadata.version("lbd")
except metadata.PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
