"""meshgate: a fast, self-configuring proxy between a WireGuard mesh and Kubernetes."""

__version__ = "0.1.0"
