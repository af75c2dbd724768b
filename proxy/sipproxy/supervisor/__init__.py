"""The supervisor process: config, the sockets table, slots, binding, the reload, the workers' lifecycle,
the MI server and the Prometheus text.

It never imports the worker side: workers are `python -m sipproxy.worker` processes it talks to through
`sipproxy.shared.control` only (tests/unit/test_layout.py checks it)."""
