"""The request engine both worlds drive: progress, idle lanes, command checks, accounting and the Result.

A world (the SimPy model in `sparkv.sim`, the real executor in `sparkv.executor`) is an adapter that owns a
clock and carries out effects; everything the two share about a request lives here, written once.
"""
