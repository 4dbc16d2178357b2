"""Portunus: self-hosted TCP/UDP port forwarding on Twisted."""

__version__ = "0.1.0"

__all__ = ["__version__"]
