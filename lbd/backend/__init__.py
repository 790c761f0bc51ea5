"""The backend agent, `lbd-backend`: prepares a backend host for lbd's VIPs (loopback
addresses, sysctls, the decapsulation and second-chance program) and reports on it.
Uses the data plane's loaders, never the daemon's control plane."""
