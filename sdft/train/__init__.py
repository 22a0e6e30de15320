"""`sdft train`: fine-tuning on original or distilled targets, replay, on-policy self-distillation, weight interpolation."""
