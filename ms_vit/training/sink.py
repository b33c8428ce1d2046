"""Dataset sinking: how many steps the device runs between two looks of the host, and the same cadence replayed on
CPU, where MindSpore does not sink.

On Ascend and GPU in graph mode, ``Model.train(dataset_sink_mode=True, sink_size=N)`` runs N steps on the device
per call from the host (``Model._train_dataset_sink_process``): step callbacks fire once per sink and
``cb_params.cur_step_num`` jumps by N. Without a ``sink_size`` a sink is a whole epoch, and the host (progress,
loss checks, SIGTERM) sees nothing for an epoch. train.py therefore sinks about ``--sink_size`` steps at a time and
calls ``Model.train`` with sinks as its "epochs": ``epoch`` = the run's steps / N and, for a resumed run,
``initial_epoch`` = the steps done / N, so that MindSpore sends the data of every epoch of the run
(``dataset_sink_num = ceil(epoch * N / dataset_size)``) and the pipeline, started at the resumed step
(``Dataset.set_init_step``), still holds the steps left.

MindSpore's sinks all have one size and run on across the end of an epoch, so every epoch must be a whole number of
sinks for its evaluation and checkpoint to fall on a sink boundary (``plan_sinks``): a divisor of the epoch's steps
when one lies between half the requested size and the requested size, else the epoch is trimmed to the largest
whole number of sinks of the size that makes as many sinks as the requested size would (the last few batches of
each epoch's shuffle are left out: fewer than one per sink; ImageNet on 8 ranks of 128: 1,251 steps, sinks of 96,
3 batches left out). A run resumed in the middle of an epoch, not on a sink boundary of this size, sinks a divisor
of it that is (``resumed_sink_size``).

On CPU ``Model.train`` ignores ``dataset_sink_mode`` (an INFO log) and trains step by step. ``SinkReplayModel`` runs
MindSpore's own sink loop there instead, with only the device's data channel replaced by the host's iterator and
the device's N-step loop by N calls of the train step: the callbacks see exactly the device's cadence. train.py uses
it on CPU when ``--sink_size`` is above 1, so the device path runs, and is tested, here.
"""
import math
from typing import Tuple

from mindspore.train import Model


def plan_sinks(requested: int, steps_per_epoch: int) -> Tuple[int, int]:
    """``(sink size, steps kept per epoch)`` for sinks of about ``requested`` steps (see the module docstring): the
    largest divisor of ``steps_per_epoch`` in [requested / 2, requested], else sinks of
    ``steps_per_epoch // ceil(steps_per_epoch / requested)`` with the epoch trimmed to a whole number of them."""
    requested = max(1, min(requested, steps_per_epoch))
    divisor = max(d for d in range(1, requested + 1) if steps_per_epoch % d == 0)
    if 2 * divisor >= requested:
        return divisor, steps_per_epoch
    size = steps_per_epoch // math.ceil(steps_per_epoch / requested)
    return size, steps_per_epoch - steps_per_epoch % size


def resumed_sink_size(sink_size: int, steps_per_epoch: int, done_steps: int) -> int:
    """The sink size for a run resumed after ``done_steps``: ``sink_size``, or for a run resumed in the middle of an
    epoch off a sink boundary, the largest divisor of ``sink_size`` on which it lies (every epoch still a whole
    number of sinks)."""
    return math.gcd(sink_size, done_steps % steps_per_epoch)


class _ReplayHelper:
    """The host-side stand-in for MindSpore's ``DatasetHelper`` in sink mode: each iteration of the sink loop gets
    the next ``sink_size`` batches of one iterator over the ``epoch_num`` epochs of data that MindSpore sends to the
    device (``Model`` computes it from the sinks asked for: ``ceil(epoch * sink_size / dataset_size)``)."""

    def __init__(self, dataset, sink_size: int, epoch_num: int):
        self._sink_size = sink_size
        self._batches = dataset.create_tuple_iterator(num_epochs=epoch_num, do_copy=False)

    def __iter__(self):
        yield [self._next() for _ in range(self._sink_size)],

    def _next(self):
        try:
            return next(self._batches)
        except StopIteration:                     # the end of an epoch: the iterator goes on with the next
            return next(self._batches)

    def sink_size(self) -> int:
        return self._sink_size

    def continue_send(self):
        pass

    def stop_send(self):
        pass

    def release(self):
        pass


class _ReplayLoop:
    """The stand-in for the device's loop: ``sink_size`` calls of the train step, the last one's outputs returned
    (what a sink returns)."""

    def __init__(self, train_network):
        self.train_network = train_network

    def __call__(self, batches):
        outputs = None
        for batch in batches:
            outputs = self.train_network(*batch)
        return outputs

    def set_train(self, mode: bool = True):
        self.train_network.set_train(mode)


class SinkReplayModel(Model):
    """``mindspore.train.Model`` whose ``train(..., dataset_sink_mode=True, sink_size=N)`` runs MindSpore's own dataset
    sink loop on CPU (see the module docstring). Only training is replayed; evaluation is as ``Model``'s."""

    def _train_process(self, epoch, train_dataset, list_callback=None, cb_params=None, initial_epoch=0,
                       valid_infos=None):
        # Model._train sends CPU runs here; it has set cb_params.batch_num to the sink size
        self._train_dataset_sink_process(epoch, train_dataset, list_callback, cb_params, cb_params.batch_num,
                                         initial_epoch, valid_infos)

    def _exec_preprocess(self, is_train, dataset, dataset_sink_mode, sink_size=-1, epoch_num=1, dataset_helper=None):
        if not (is_train and dataset_sink_mode):
            return super()._exec_preprocess(is_train, dataset, dataset_sink_mode, sink_size, epoch_num,
                                            dataset_helper)
        helper = dataset_helper or _ReplayHelper(dataset, sink_size, epoch_num)
        self._train_network.set_train(True)
        self._backbone_is_train = True
        return helper, _ReplayLoop(self._train_network)
