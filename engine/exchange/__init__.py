"""The exchange port (port.py) and its adapters: the paper exchange and Polymarket."""
