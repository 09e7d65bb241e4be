"""The trio engine.

The `Engine` façade and its lifecycle, the scheduling of runs, the driver that performs
the core's decisions, steps, group commit, timers, the clock and the thread pool.
"""
