"""What an operator watches: Prometheus metrics, the JSON access log, traces, alerts, fault injection."""
