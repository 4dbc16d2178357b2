"""
Program the kernel-mode rules of the netns benchmark into an edge namespace.

    .venv/bin/python contrib/bench/kernel_rule.py EDGE_NS LISTEN PORT TARGET TARGET_PORT [--udp]

Starts a KernelForwarder (portunus.dataplane.kernel) whose nft runs inside
EDGE_NS (C{ip netns exec EDGE_NS nft}), replaces any table it finds of
ours, installs a TCP rule LISTEN:PORT -> TARGET:TARGET_PORT (and a UDP rule
on the same port with --udp), and exits leaving the table in place, as a
forwarder killed with -9 would.  The benchmark deletes the table after the
trial (C{nft delete table inet portunus}).
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import task
from twisted.internet.defer import ensureDeferred

from portunus.dataplane.kernel import KernelForwarder, NftRunner
from portunus.model import PortRange, Protocol, Rule, Target
from tests._netns import kernel_availability


async def program(reactor: Any, args: argparse.Namespace) -> None:
    prefix = ["ip", "netns", "exec", args.namespace]
    availability = kernel_availability(args.namespace)
    kernel = KernelForwarder(NftRunner(reactor, [*prefix, "nft"]), availability, instance="bench")
    await kernel.start()
    protocols = [Protocol.TCP] + ([Protocol.UDP] if args.udp else [])
    for protocol in protocols:
        rule = Rule(
            name=f"bench-{protocol.value}",
            protocol=protocol,
            listen=PortRange.single(args.port),
            targets=(Target(args.target, PortRange.single(args.target_port)),),
            listen_addresses=(args.listen,),
            udp_max_flows=65535,
        )
        await kernel.install(rule)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("namespace")
    parser.add_argument("listen")
    parser.add_argument("port", type=int)
    parser.add_argument("target")
    parser.add_argument("target_port", type=int)
    parser.add_argument("--udp", action="store_true")
    args = parser.parse_args()
    task.react(lambda reactor: ensureDeferred(program(reactor, args)))


if __name__ == "__main__":
    main()
