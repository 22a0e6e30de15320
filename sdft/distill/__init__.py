"""`sdft distill`: the seed model rewrites each target response (config, stage, filters)."""
