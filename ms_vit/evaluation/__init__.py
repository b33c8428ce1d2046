"""Evaluation: top-1/top-5, loss and the confusion matrix over a dataset (``evaluate.py``), the report of the worst
classes and confused pairs (``report.py``).

May import: ``ms_vit.data``, ``ms_vit.pictures``, and the base."""
