"""The `exitguard` command line: run (scenarios on the paper exchange), exit, status, history, diagram."""
