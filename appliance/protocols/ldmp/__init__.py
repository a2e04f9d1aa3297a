"""LDMP: leader-determined membership (views, primary change, joins and removals)."""
