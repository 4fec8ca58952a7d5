"""Scoring a run: the eval stage, its scores and its report."""
