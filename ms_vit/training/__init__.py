"""Training: one step (``train_step.py``), AdamW (``optim.py``), the schedule (``lr.py``), the losses (``loss.py``),
the run guard (``guard.py``), dataset sinking (``sink.py``), the progress line (``progress.py``), the run's records
(``history.py``) and its folder (``run_folder.py``).

May import: ``ms_vit.weights`` (checkpoints), ``ms_vit.pictures`` (the curves), and the base."""
