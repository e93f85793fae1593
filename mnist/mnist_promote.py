"""The promotion gate: move a model's alias to a candidate version only if it scores better on the same data.

Task: ``run(input_path, output_path, params)``.
- input: the candidate, a model table at the version the task was given (in a pipeline, ``steps.train.output``).
- output: the alias to move, ``models/NAME@ALIAS`` (e.g. ``models/mnist_cnn@production``): the only thing this
  task's credential lets it change.
- params: ``inputs.eval`` (the evaluation dataset, pinned by the pipeline: ``{"uri", "version"}``; required),
  ``margin`` (0.0: how much better, in accuracy, the candidate must be), ``split`` ("test"), ``create_alias``
  (false: an alias that does not exist is an error; true: the first candidate creates it).

Both versions are scored by mnist_evaluate.score on the same dataset version. The decision, both scores and the
dataset version are returned (the run's record) and kept in the alias's history (who moved it: this task).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mnist_evaluate import score  # noqa: E402

from ai_platform.sdk import open_dataset, report_progress, resolve_params  # noqa: E402

PARAMS = {  # what the script takes, and its defaults (`aip tasks params mnist/mnist_promote.py` lists them)
    "inputs": {},  # {"eval": {"uri": ..., "version": N}}: the evaluation dataset (a pipeline step's inputs.eval)
    "margin": 0.0,  # the accuracy the candidate must gain over the aliased version to take the alias
    "split": "test",  # the rows both models are scored on
    "create_alias": False,  # true: when the alias does not exist yet, the candidate gets it
}
ALIAS_OUTPUT = re.compile(r"^models/(?P<model>[^/@]+)@(?P<alias>[^/@]+)$")


def run(input_path: str, output_path: str, params: dict) -> dict:
    params = resolve_params(params, PARAMS, "mnist_promote.py")
    target = ALIAS_OUTPUT.match(output_path or "")
    if not target:
        raise ValueError(f"mnist_promote's output must be the alias to move, models/NAME@ALIAS, got {output_path!r}")
    evaluation = params["inputs"].get("eval")
    if not evaluation:
        raise ValueError("mnist_promote needs inputs.eval: the dataset both models are scored on")
    model, alias = target["model"], target["alias"]
    candidate_version = open_dataset(input_path).version  # the version this task was given
    if Path(input_path.rstrip("/")).name.removesuffix(".lance") != model:
        raise ValueError(f"the candidate ({input_path}) is not a version of model '{model}'")
    from ai_platform.client import Client

    with Client() as client:
        aliases = client.get_model(model).get("aliases") or {}
        current_version = aliases.get(alias)
        if current_version is None and not params["create_alias"]:
            raise ValueError(f"model '{model}' has no alias '{alias}' (create_alias: true lets the first candidate "
                             f"take it)")
        candidate = score(evaluation["uri"], evaluation["version"], model, candidate_version, params["split"])
        current = (score(evaluation["uri"], evaluation["version"], model, current_version, params["split"])
                   if current_version is not None else None)
        gain = candidate["accuracy"] - (current["accuracy"] if current else 0.0)
        promote = current is None or (current_version != candidate_version and gain > float(params["margin"]))
        if promote:
            client.set_alias(model, alias, candidate_version)
    decision = "promoted" if promote else "kept"
    result = {"decision": decision, "model": model, "alias": alias, "candidate_version": candidate_version,
              "candidate_accuracy": candidate["accuracy"],
              "current_version": current_version, "current_accuracy": current["accuracy"] if current else None,
              "margin": params["margin"], "eval_dataset_version": evaluation["version"],
              "alias_version": candidate_version if promote else current_version}
    report_progress(1.0, f"{decision}: {model}@{alias} -> v{result['alias_version']} (candidate "
                         f"{candidate['accuracy']:.4f}, current "
                         f"{'none' if current is None else format(current['accuracy'], '.4f')})")
    return result
