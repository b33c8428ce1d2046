"""Pictures: training curves, top-k charts, attention maps and the confusion matrix (``plots.py``), the label drawn on
an image (``render.py``), attention weights and rollout (``visualize.py``).

May import: ``ms_vit.models`` (the attention of a ViT), and the base (``ms_vit.files``)."""
