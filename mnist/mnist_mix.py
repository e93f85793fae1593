"""Mix the clean digits with people's corrections into one training dataset, with Daft.

Task: ``run(input_path, output_path, params)``.
- input: the clean dataset (``datasets/mnist_clean``: ``image``, ``label``, ``split``), at the version given.
- output: the mixed dataset (e.g. ``datasets/mnist_train``), same schema; a new version each run.
- params: ``inputs.feedback`` (the corrections, ``datasets/mnist_feedback`` as the digit page appends them, pinned
  by the pipeline: ``{"uri", "version"}``; required), ``feedback_weight`` (4: each correction is repeated this many
  times among the training rows, so a handful of them count against thousands of clean digits).

Every clean row is kept (its ``test`` split stays the held-out set the gate scores on); each feedback row joins the
``train`` split ``feedback_weight`` times. Returns the rows of each kind.
"""

from __future__ import annotations

from ai_platform.sdk import open_dataset, report_progress, resolve_params, storage_options

PARAMS = {  # what the script takes, and its defaults (`aip tasks params mnist/mnist_mix.py` lists them)
    "inputs": {},  # {"feedback": {"uri": ..., "version": N}}: the corrections (a pipeline step's inputs.feedback)
    "feedback_weight": 4,  # times each correction is repeated among the training rows
}


def run(input_path: str, output_path: str, params: dict) -> dict:
    import daft
    import lance
    from daft import col, lit

    params = resolve_params(params, PARAMS, "mnist_mix.py")
    feedback = params["inputs"].get("feedback")
    if not feedback:
        raise ValueError("mnist_mix needs inputs.feedback: the dataset of corrections")
    weight = int(params["feedback_weight"])
    if not 0 <= weight <= 1000:
        raise ValueError(f"feedback_weight must be 0 to 1000, got {weight}")
    clean = open_dataset(input_path)  # the version this task was given
    corrections = open_dataset(feedback["uri"], feedback["version"])
    if corrections.schema.field("image").type != clean.schema.field("image").type:
        raise ValueError(f"feedback's images are {corrections.schema.field('image').type}, not "
                         f"{clean.schema.field('image').type} as in {input_path}")
    columns = ["image", "label", "split"]
    mixed = daft.read_lance(input_path, version=clean.version).select(*columns)
    extra = daft.read_lance(feedback["uri"], version=feedback["version"]).select(
        col("image"), col("label"), lit("train").alias("split"))
    for _ in range(weight):
        mixed = mixed.concat(extra)
    try:
        lance.dataset(output_path, storage_options=storage_options())
        mode = "overwrite"  # a new version; earlier ones stay readable (and cached pipeline steps point at them)
    except (ValueError, OSError):
        mode = "create"
    mixed.write_lance(output_path, mode=mode)
    written = lance.dataset(output_path, storage_options=storage_options())
    result = {"rows": written.count_rows(), "clean_rows": clean.count_rows(),
              "feedback_rows": corrections.count_rows(), "feedback_weight": weight,
              "output_version": written.version}
    report_progress(1.0, f"{result['rows']} rows: {result['clean_rows']} clean + {result['feedback_rows']} "
                         f"corrections x{weight}", result)
    return result
