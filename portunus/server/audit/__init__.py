"""
The operator audit log: what authenticated callers asked of the server,
and whether it was allowed.  Entries are written durably by a background
writer that never drops one (a request waits when its queue is full);
requests refused before anyone authenticated are only tallied.
"""

from portunus.server.audit.entry import AuditEntry, AuditSink

__all__ = ["AuditEntry", "AuditSink"]
