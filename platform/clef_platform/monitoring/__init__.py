"""Platform metrics: one catalog of names, exported through Ray's metrics pipeline or, for
jobs outside Ray, a prometheus_client registry with the same names (docs/monitoring.md)."""
