"""`sdft run`: the whole experiment from one YAML config: arms, training seeds, stage keys and caching."""
