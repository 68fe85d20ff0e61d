"""Analysis of TimeSformer models: attention, patterns, attributions and cost."""
