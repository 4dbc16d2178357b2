"""
The data plane shared by the edge client and the standalone forwarder.

It imports nothing from the control plane, the store or the web console.
"""

from portunus.dataplane.forwarder import BoundRule, Forwarder
from portunus.dataplane.listeners import BindError
from portunus.dataplane.stats import PortStats, RuleStats

__all__ = ["BindError", "BoundRule", "Forwarder", "PortStats", "RuleStats"]
