"""
Console scripts: C{portunus-server} (L{portunus.cli.server}).  Online
commands call the operator HTTP API with treq.
"""
