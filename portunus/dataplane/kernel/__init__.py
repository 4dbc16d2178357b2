"""
Kernel mode: plain rules forwarded by nftables instead of the relay.

A forwarder backend beside the relay (L{portunus.dataplane.forwarder}): it
turns a plain rule into DNAT to the target and source NAT to the egress
address in one nftables table of our own, reads the rule's counters back,
and reconciles the table at start, reload and stop.  See docs/kernel-mode.md.

Like the rest of the data plane it imports nothing from the control plane,
the server or the client.
"""

from portunus.dataplane.kernel._backend import KernelCounters, KernelForwarder, Reconciled
from portunus.dataplane.kernel._conntrack import ConntrackReader, Flow, active_counts, parse_flows
from portunus.dataplane.kernel._eligibility import (
    REASONS,
    Ineligible,
    check_eligible,
    refuse_unless_eligible,
)
from portunus.dataplane.kernel._probe import UNAVAILABLE_REASONS, Availability, probe_host
from portunus.dataplane.kernel._ruleset import DEFAULT_TABLE, KernelRule, Ruleset
from portunus.dataplane.kernel._runner import INftRunner, NftError, NftRunner, find_command

__all__ = [
    "DEFAULT_TABLE",
    "REASONS",
    "UNAVAILABLE_REASONS",
    "Availability",
    "ConntrackReader",
    "Flow",
    "INftRunner",
    "Ineligible",
    "KernelCounters",
    "KernelForwarder",
    "KernelRule",
    "NftError",
    "NftRunner",
    "Reconciled",
    "Ruleset",
    "active_counts",
    "check_eligible",
    "find_command",
    "parse_flows",
    "probe_host",
    "refuse_unless_eligible",
]
