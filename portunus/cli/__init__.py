"""
Console scripts: C{portunus-server} (L{portunus.cli.server}) and
C{portunus-client} (L{portunus.cli.client}), each a table of commands
parsed one way (L{portunus.cli.commandline}).  Online commands call the
operator HTTP API with treq.
"""
