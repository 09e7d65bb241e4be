"""The pure core: what a workflow means, decided without I/O.

No trio, duckdb or msgpack here, no clock and no awaits: the core folds recorded
events and decides; the engine performs and records.
"""
