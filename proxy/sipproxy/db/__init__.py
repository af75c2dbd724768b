"""The sockets database: URL conversion, the OpenSIPS 3.6 schema, and the row reader."""
