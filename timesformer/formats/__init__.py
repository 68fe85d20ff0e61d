"""Checkpoint formats other than our own, each read into a `Checkpoint` in the official layout
(`timesformer.checkpoints` builds the model from it): `official` (also timm ViTs), `mmaction`,
`huggingface` (Timesformer and ViT folders, hub ids), and `vit` (starting a TimeSformer from an image ViT)."""
