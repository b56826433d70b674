"""Flower ClientApp of fedrisk: one per institution."""
