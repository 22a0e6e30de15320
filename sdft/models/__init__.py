"""Seed models: names and aliases resolved to local folders, GGUF conversion, loading with an adapter, and the weight maths of adapters."""
