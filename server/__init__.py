"""Flower ServerApp of fedrisk: coordinates a campaign."""
