"""
The operator HTTP API (JSON under C{/v1}), a Klein app over an
L{portunus.server.plane.IControlPlane}.  See C{docs/api.md}.
"""

from portunus.server.api.app import make_api

__all__ = ["make_api"]
