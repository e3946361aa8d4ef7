"""UiPath AI Center sample package: a wine classifier with Main.train(), evaluate() and save()."""

import csv
import glob
import json
import os
import pickle

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, confusion_matrix

LABEL = "target"
DEFAULTS = {"n_estimators": 100, "max_depth": None, "random_state": 0}


def load_params():
    """trainyard passes params.json merged with the run's hyperparameters as $TRAINYARD_PARAMS."""
    path = os.environ.get("TRAINYARD_PARAMS") or "params.json"
    params = dict(DEFAULTS)
    if os.path.isfile(path):
        with open(path) as fh:
            params.update(json.load(fh))
    return params


def load_csvs(directory, prefer=None):
    """Features and labels from the CSVs under directory (only those in a `prefer` folder when there are some)."""
    files = []
    if prefer:
        files = sorted(glob.glob(os.path.join(directory, "**", prefer, "*.csv"), recursive=True))
    files = files or sorted(glob.glob(os.path.join(directory, "**", "*.csv"), recursive=True))
    if not files:
        raise FileNotFoundError(f"no .csv files under {directory}")
    names, rows = None, []
    for path in files:
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            names = next(reader)
            rows += [[float(v) for v in row] for row in reader if row]
    data = np.array(rows)
    label = names.index(LABEL)
    features = [n for i, n in enumerate(names) if i != label]
    return np.delete(data, label, axis=1), data[:, label].astype(int), features


class Main:
    """AI Center calls train(), then save(); evaluate() scores the held-out folder."""

    def __init__(self):
        self.model = None
        self.params = load_params()
        self.artifacts = os.environ.get("artifacts_directory", "artifacts")
        os.makedirs(self.artifacts, exist_ok=True)

    def train(self, training_directory):
        x, y, features = load_csvs(training_directory, prefer="training")
        print(f"training on {len(y)} rows with {self.params}", flush=True)
        self.model = RandomForestClassifier(n_estimators=int(self.params["n_estimators"]),
                                            max_depth=self.params["max_depth"],
                                            random_state=self.params["random_state"])
        self.model.fit(x, y)
        ranked = sorted(zip(features, self.model.feature_importances_, strict=True), key=lambda p: -p[1])
        with open(os.path.join(self.artifacts, "feature_importance.txt"), "w") as fh:
            fh.writelines(f"{name}\t{weight:.4f}\n" for name, weight in ranked)

    def evaluate(self, evaluation_directory):
        x, y, _ = load_csvs(evaluation_directory)
        predicted = self.model.predict(x)
        matrix = confusion_matrix(y, predicted)
        np.savetxt(os.path.join(self.artifacts, "confusion_matrix.csv"), matrix, fmt="%d", delimiter=",")
        accuracy = float(accuracy_score(y, predicted))
        print(f"accuracy on {len(y)} held-out rows: {accuracy:.4f}", flush=True)
        return accuracy

    def save(self):
        # The working directory is the trained package: these files ship with the code.
        with open("model.pkl", "wb") as fh:
            pickle.dump(self.model, fh)
        with open("trained_params.json", "w") as fh:
            json.dump(self.params, fh, indent=2, sort_keys=True)
