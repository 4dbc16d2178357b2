"""
twistd plugins: C{portunus-server}, C{portunus-client}, C{portunus-standalone}.

ServiceMaker imports each tap module only when its plugin is used, so
listing plugins stays cheap.  This directory must never contain an
C{__init__.py}: it is a portion of Twisted's own C{twisted.plugins} package.
"""

from twisted.application.service import ServiceMaker

portunusServer = ServiceMaker(
    "Portunus server",
    "portunus.server.tap",
    "The Portunus control plane: pushes forwarding rules to edge clients.",
    "portunus-server",
)

portunusClient = ServiceMaker(
    "Portunus client",
    "portunus.client.tap",
    "A Portunus edge client: forwards the rules its server pushes.",
    "portunus-client",
)

portunusStandalone = ServiceMaker(
    "Portunus standalone",
    "portunus.standalone.tap",
    "The Portunus forwarder driven by one TOML file.",
    "portunus-standalone",
)
