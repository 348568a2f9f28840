"""The backend service: jobs over ZeroMQ (``stabledreamer serve``).

``service`` runs the ROUTER loop (commands, per-client queues, preview flow control), ``jobs``
keeps job records under the state folder, ``worker`` runs one job in a child process,
``logbuffer`` keeps recent log lines for clients, ``security`` sets up CURVE.
Wire protocol: ``docs/protocol.md``.
"""
