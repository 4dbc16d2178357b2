"""
A data plane served by N worker processes (C{--workers N}), for the edge
and the standalone forwarder alike.

Python runs one thread of bytecode at a time, so one process tops out at
one core.  The main process binds every listener itself and hands the
bound sockets and the rules to its workers; each runs its own reactor and
L{Forwarder}:

  - L{pool}: the worker count option, binding a rule for N workers, the
    restart backoff, and the arithmetic on the workers' reports;
  - L{link}: one socketpair per worker, carrying JSON messages and the
    sockets they hand over (C{SCM_RIGHTS});
  - L{process}: one worker as the main process sees it, and how it is
    spawned;
  - L{forwarder}: L{WorkerForwarder}, the L{Forwarder} interface served by
    the workers: it starts, restarts, feeds and stops them and merges
    their reports;
  - L{worker}: the worker process itself (C{python -m
    portunus.dataplane.workers.worker}).

The role that runs them (C{client}, C{standalone}) names their log
events: C{<role>.worker_started}, C{<role>.worker_exited} ...
"""
