"""bench/peers' Metaflow contender: a foreach over the grid's combinations, each task one mnist training."""

import json
import os
import sys

from metaflow import FlowSpec, JSONType, Parameter, step

# The flow runs as `python metaflow_flow.py ...`, so its own directory (bench/peers_support) is importable.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mnist_train import label, train


class PeersMnistSweep(FlowSpec):
    """Train every combination (run --max-workers N trains N at once) and gather their metrics."""

    combos = Parameter("combos", type=JSONType, required=True, help="JSON list of hyperparameter combinations")
    out_root = Parameter("out_root", required=True, help="a directory per combination is written under it")
    train_python = Parameter("train_python", required=True)
    model_dir = Parameter("model_dir", required=True)
    data_dir = Parameter("data_dir", required=True)

    @step
    def start(self):
        self.next(self.train, foreach="combos")

    @step
    def train(self):
        self.combo = self.input
        self.label = label(self.combo)
        self.metrics = train(self.combo, os.path.join(self.out_root, self.label), self.train_python, self.model_dir,
                             self.data_dir)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.results = {inp.label: inp.metrics for inp in inputs}
        self.next(self.end)

    @step
    def end(self):
        print("PEERS_RESULTS " + json.dumps(self.results, sort_keys=True))


if __name__ == "__main__":
    PeersMnistSweep()
