"""What the server tells its operators about itself: Prometheus metrics, request ids and
structured logs.

Kept apart from the transports and the services: the metrics read the state of the log hub and the
reconciler when scraped (nothing on the hot path but one middleware), and the request id travels
in a context variable so any log line, and every problem+json body, can name the request that
caused it.
"""
