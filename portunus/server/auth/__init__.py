"""
Who is asking: users, passwords, web sessions, bearer credentials, the
login throttle, CSRF and the grant checks that decide what a user may do.

The operator API's one pipeline (L{portunus.server.api.app}) calls into
here; nothing else authenticates.
"""
