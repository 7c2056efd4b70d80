"""Prefect flows and the ``ragpress`` CLI. The only package that imports Prefect."""
