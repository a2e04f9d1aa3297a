"""The fault suite: clients that record a history, faults, and the checkers that judge the run."""
