"""Fault-injection suite: kills, full disks, diverging losses and bad input (``pytest -m faults``)."""
