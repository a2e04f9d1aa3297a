"""Deterministic simulation of a whole cluster: simulated clock, network, power and faults.

Every source of randomness is one seeded ``random.Random``; the protocol core reads no clock.
So a seed replays exactly: ``appliance sim --seed N`` re-runs the run that failed.
"""
