"""What two or more cronbus services share: events, names, settings, the NATS bootstrap and runtime."""
