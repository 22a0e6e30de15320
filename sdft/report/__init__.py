"""`sdft report`: report.md / report.html and plots, from a run folder's saved results only."""
