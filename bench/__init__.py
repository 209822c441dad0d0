"""The benchmark harness behind ``make bench``: speed, loss and memory, measured.

Nothing here is a test: the numbers depend on the machine and on what else runs
on it, so every comparison that matters is a ratio taken inside one run.
"""
