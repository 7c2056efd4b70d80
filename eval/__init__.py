"""Token-IoU evaluation: datasets, metrics and reports (plain Python, no Prefect)."""
