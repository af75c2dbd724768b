"""What the supervisor, the workers and the operator all import: socket descriptions and OpenSIPS row parsing
(`socketspec`), the sockets table and its URL (`schema`, `db_url`), per-socket counters (`counters`), the
supervisor-worker control protocol (`control`) and its channel (`channel`).

Nothing here imports the supervisor or the worker side (tests/unit/test_layout.py checks it)."""
