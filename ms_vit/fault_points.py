"""Write points: where a crash-consistency test stops a process, at an exact file write instead of a guessed time.

Every file ms_vit writes for a training run passes through ``files.write_atomically`` (or ``files.remove``,
``open_lock``, ``probe_writable``), which name each write and call ``fault_point`` just before and just after it.
``fault_point`` is where a test makes a process die or receive a signal at an exact write (``MS_VIT_FAULT``), and where
the writes are logged in order (``MS_VIT_WRITE_LOG``); with neither variable set it does nothing.

* ``MS_VIT_WRITE_LOG=FILE``: append one line per point reached, ``<side> <label>`` (side ``before``/``after``;
  run events such as ``evaluate`` have the side ``at``).
* ``MS_VIT_FAULT=kill|term``: once per process, at the point ``MS_VIT_FAULT_AT`` names exactly (``at evaluate@step
  10``), or else at the first write point (``before``/``after``) that is not a line of the file ``MS_VIT_FAULT_SKIP``
  (the points a sweep has covered), note the point in the file ``MS_VIT_FAULT_HIT`` and act: ``kill`` sends the
  process SIGKILL (no clean-up of any kind), ``term`` sends it SIGTERM and goes on (as a pre-emption notice).
  ``MS_VIT_FAULT_RANK`` restricts it to one rank under msrun.

A label is the file's base name (or the event's name) and where the run is, ``val_history.json@step 10``:
``set_run_position`` keeps the latter (train.py sets it as steps are done), so the labels of a run are the same in
a process that resumes it.
"""
import os
import signal

_position = "start"


def set_run_position(position: str) -> None:
    """Where the run is (``"step 10"``), part of the label of every later write point."""
    global _position
    _position = position


def reached(position: str) -> None:
    """The run has reached ``position`` (``"step 10"``): ``set_run_position``, and an event point there (``at
    step@step 10``: where a test stops a worker mid-epoch)."""
    set_run_position(position)
    fault_point(position.split()[0])


def fault_point(name: str, side: str = "at") -> None:
    """A point where a test may stop this process (see the module docstring); ``name``: the file or event."""
    point = f"{side} {name}@{_position}"
    log = os.environ.get("MS_VIT_WRITE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(point + "\n")
    action = os.environ.get("MS_VIT_FAULT")
    if not action or os.environ.get("MS_VIT_FAULT_RANK", str(_rank())) != str(_rank()):
        return
    target = os.environ.get("MS_VIT_FAULT_AT")
    if target is not None and point != target:
        return
    if target is None:                                    # the first write point not yet covered
        skip = os.environ.get("MS_VIT_FAULT_SKIP", "")
        if side == "at" or (os.path.isfile(skip) and point in _lines(skip)):
            return
    hit = os.environ.get("MS_VIT_FAULT_HIT")
    if hit:
        with open(hit, "a") as f:
            f.write(point + "\n")
    del os.environ["MS_VIT_FAULT"]                        # once per process
    os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGTERM)


def _lines(path: str) -> set:
    with open(path) as f:
        return {line.rstrip("\n") for line in f}


def _rank() -> int:
    return int(os.environ.get("RANK_ID", os.environ.get("MS_NODE_ID", "0")) or 0)
