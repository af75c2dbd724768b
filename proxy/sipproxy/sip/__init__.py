"""The SIP core of the stateless proxy: parsing, validation, routing decisions and message rewriting.

Everything in this package is pure: bytes in, decisions and bytes out. Sockets, processes and timers live
in the runtime, which feeds `engine.SipEngine.handle` one complete message at a time.
"""
