"""Deployment: the ViT as an ONNX graph (``onnx_export.py``), MindSpore's graph compile cache keyed safely
(``compile_cache.py``), a MINDIR's operators checked before it is loaded (``mindir.py``).

May import: the base (``ms_vit.files``)."""
