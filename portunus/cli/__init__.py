"""
Console scripts: C{portunus-server} (L{portunus.cli.server}),
C{portunus-client} (L{portunus.cli.client}) and C{portunus-standalone}
(L{portunus.cli.standalone}), each a table of commands
parsed one way (L{portunus.cli.commandline}).  Online commands call the
operator HTTP API with treq.
"""
