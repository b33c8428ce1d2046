"""The model: the ViT (``vit.py``: config, variants, cells), the layers whose implementation depends on the backend
(``layers.py``), the fused CPU kernels (``kernels/``) and the AMP levels (``amp.py``).

May import: ``ms_vit.device``, ``ms_vit.files`` (the base); nothing of training, data or weights."""
