"""Extractive, query-aware compression: whole sentences chosen against the question, kept in order."""
