"""Studies of finished or live runs: figures, reports (and, in time, sweeps and exports)."""
