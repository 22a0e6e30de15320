"""sdft: Self-Distillation Fine-Tuning (Yang et al., ACL 2024) and forgetting measurement."""

__version__ = "0.1.0"
