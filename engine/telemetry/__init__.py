"""What operators watch: structured log events, metrics, divergence detection, the Prometheus endpoint."""
