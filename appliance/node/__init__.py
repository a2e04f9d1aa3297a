"""The node agent: the asyncio shell around the sans-I/O protocol core."""
