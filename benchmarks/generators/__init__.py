"""Generators that build benchmark scenarios (trained models, not replays)."""
