"""crispyd: the daemon process (flags, locking, signals, wiring)."""
