"""A worker process (`python -m sipproxy.worker --control-fd N`): the SIP engine on every message its
transports read, and the sending of what the engine decides.

`worker` holds the main loop and the control handling; each transport is a sibling module (`udp`, `tcp`)
that sees only the narrow interface of `transport`. It never imports the supervisor side
(tests/unit/test_layout.py checks it)."""
