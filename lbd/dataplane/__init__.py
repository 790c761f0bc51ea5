"""The data plane's Python side: the program's layout (read from xdp/lbd_shared.h),
its maps and pins, the tables that go into them (Maglev, second choices, flow hash) and the
Programmer that writes plans into them in a safe order. Imports nothing from lbd/ above it,
so it can be driven, tested and benchmarked without the daemon (tests/unit/test_imports.py)."""
