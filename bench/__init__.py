"""lbd's benchmarks: each writes bench/results/<name>.json; `make bench` runs them all."""
