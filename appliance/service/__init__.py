"""The sample key-value service: a Redis-compatible application that knows nothing of
replication beyond the VDF.
"""
