"""
The data plane shared by the edge client and the standalone forwarder.

It imports nothing from the control plane, the store or the web console.
"""

from portunus.dataplane.forwarder import SUPPORTED_PROTOCOLS, BoundRule, Forwarder
from portunus.dataplane.listeners import BindError
from portunus.dataplane.stats import PortStats, RuleStats
from portunus.dataplane.tcp import SpliceContext
from portunus.dataplane.udp import UdpRuntime

__all__ = [
    "SUPPORTED_PROTOCOLS",
    "BindError",
    "BoundRule",
    "Forwarder",
    "PortStats",
    "RuleStats",
    "SpliceContext",
    "UdpRuntime",
]
