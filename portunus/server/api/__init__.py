"""
The operator HTTP API (JSON under C{/v1}), a Klein app over an
L{portunus.server.plane.IControlPlane}: L{portunus.server.api.app.make_api}.
See C{docs/api.md}.
"""
