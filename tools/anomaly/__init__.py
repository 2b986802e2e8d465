"""Continual anomaly detection (CADIC) with one fixed-size incremental coreset, and the score_anomaly tool."""
