"""
The web console's static files: C{index.html} and C{assets/} (hand-written
ES modules and CSS, no build step), served by
L{portunus.server.api.console}.
"""
