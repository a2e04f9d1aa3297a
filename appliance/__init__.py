"""Fault-tolerant cluster appliance: LLFT primary/backup replication with power fencing."""

__version__ = "0.1.0"
