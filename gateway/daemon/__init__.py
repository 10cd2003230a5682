"""The wiring: the Gateway, signals, metrics, health and the status server."""
