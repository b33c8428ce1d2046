"""Get and prepare data for ms_vit: the tutorial's ImageNet subset, and built-in real-image datasets."""
