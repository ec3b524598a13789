"""The run directory and who owns it: the store, the lock, followers and the runs table."""
