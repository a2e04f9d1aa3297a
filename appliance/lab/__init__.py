"""The emulated cluster: every node an agent process on this machine, with a power strip."""
