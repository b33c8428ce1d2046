"""Weights: ms_vit's checkpoints (``checkpoint.py``) and MindSpore's ``.ckpt`` format read safely
(``ckpt_format.py``), every publisher's layout (``convert.py``, ``python -m ms_vit.weights.convert``), and the registry
of weight sets by name (``registry.py`` + ``weights.tsv``, ``python -m ms_vit.weights``).

May import: ``ms_vit.models``, and the base (``ms_vit.downloads``, ``ms_vit.files``)."""
