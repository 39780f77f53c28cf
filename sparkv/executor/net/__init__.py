"""The network half of the real executor: KV server, wire protocol, client and link shaping. Imports no torch."""
