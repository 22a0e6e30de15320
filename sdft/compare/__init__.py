"""`sdft analyze` and `sdft shift`: how far a fine-tuned model moved from its seed, in its answers and in its
weights; `sdft analyze paired`: two evaluations item by item."""
