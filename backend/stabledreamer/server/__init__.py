"""The backend service: jobs over ZeroMQ (``stabledreamer serve``).

``service`` runs the ROUTER loop (commands, per-client queues, preview flow control), ``jobs``
keeps job records under the state folder, ``queue`` picks the next job fairly between clients,
``pool`` keeps the long-lived worker processes, ``worker`` runs jobs in one of them,
``logbuffer`` keeps recent log lines for clients, ``security`` sets up CURVE.
Wire protocol: ``docs/protocol.md``.
"""
