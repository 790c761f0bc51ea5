"""The test lab and the demo: network namespaces with clients, a router, lbd
hosts and backends (lbd.testing.lab), the bpf tier's FIB namespace
(fibns), a UDP echo server (udp_echo) and `make demo` (demo).

Not the product: the installed package leaves lbd.testing out (pyproject's
packages), so an edge host carries none of it; the checkout's venv (make
test, make demo, make bench) has it."""
