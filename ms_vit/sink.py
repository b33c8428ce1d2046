"""Dataset sinking: how many steps the device runs between two looks of the host, and the same cadence replayed on
CPU, where MindSpore does not sink.

On Ascend and GPU in graph mode, ``Model.train(dataset_sink_mode=True, sink_size=N)`` runs N steps on the device
per call from the host (``Model._train_dataset_sink_process``): step callbacks fire once per sink and
``cb_params.cur_step_num`` jumps by N. Without a ``sink_size`` a sink is a whole epoch, and the host (progress,
loss checks, SIGTERM) sees nothing for an epoch. train.py therefore sinks ``--sink_size`` steps at a time, a
divisor of the steps per epoch (``choose_sink_size``) so that epochs, evaluation and checkpoints still fall on
sink boundaries, and calls ``Model.train`` with sinks as its "epochs": ``epoch`` = the run's steps / N and, for a
resumed run, ``initial_epoch`` = the steps done / N, so that MindSpore sends the data of every epoch of the run
(``dataset_sink_num = ceil(epoch * N / dataset_size)``) and the pipeline, started at the resumed step
(``Dataset.set_init_step``), still holds the steps left.

On CPU ``Model.train`` ignores ``dataset_sink_mode`` (an INFO log) and trains step by step. ``SinkReplayModel`` runs
MindSpore's own sink loop there instead, with only the device's data channel replaced by the host's iterator and
the device's N-step loop by N calls of the train step: the callbacks see exactly the device's cadence. train.py uses
it on CPU when ``--sink_size`` is above 1, so the device path runs, and is tested, here.
"""
import math

from mindspore.train import Model


def divisors(n: int):
    return [d for d in range(1, n + 1) if n % d == 0]


def choose_sink_size(requested: int, steps_per_epoch: int, done_steps: int = 0) -> int:
    """The largest sink size not above ``requested`` that divides the steps of an epoch and, for a run resumed in
    the middle of one, the steps already done in it: every epoch then ends on a sink boundary."""
    common = math.gcd(steps_per_epoch, done_steps % steps_per_epoch) or steps_per_epoch
    return max(d for d in divisors(common) if d <= max(1, requested))


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
