"""
The operator audit log: what was asked of the server, by whom, and whether
it was allowed.  Entries are written durably by a bounded background
writer that never blocks a request.
"""

from portunus.server.audit.entry import AuditEntry, AuditSink

__all__ = ["AuditEntry", "AuditSink"]
