"""``aip datasets|models``: tables in the lake, models served, and predictions from a terminal."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ai_platform.cli.output import Column, add_output, ago, chosen_format, number, print_rows, print_value, size

DEPLOY_OPTIONS: dict[str, tuple[type, str]] = {
    "version": (int, "the version to serve (default: the newest, followed as new versions are saved)"),
    "max_batch_size": (int, "most requests merged into one forward pass"),
    "replicas": (int, "Ray Serve: a fixed number of replicas"),
    "min_replicas": (int, "Ray Serve: autoscale from this many replicas ..."),
    "max_replicas": (int, "... up to this many"),
    "target_ongoing_requests": (float, "Ray Serve: requests per replica that autoscaling aims for"),
    "num_cpus": (float, "Ray Serve: CPUs each replica holds"),
    "num_gpus": (float, "Ray Serve: GPUs each replica holds"),
}
SHOWN_METRICS = 2  # metrics a version's row shows; -o json has them all


def _client():  # noqa: ANN202 - ai_platform.client.Client
    from ai_platform.client import Client

    return Client()


def compact_metrics(metrics: dict[str, Any], most: int = SHOWN_METRICS) -> str:
    """``accuracy=0.9812 test_loss=0.0613``: the numeric metrics first, accuracy-like ones leading."""
    numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    ordered = sorted(numeric, key=lambda k: ("acc" not in k and "f1" not in k, "loss" not in k, k))
    return " ".join(f"{k}={number(numeric[k])}" for k in ordered[:most])


def _aliases(aliases: dict[str, int]) -> str:
    return ", ".join(f"{alias}→{version}" for alias, version in sorted(aliases.items()))


TABLE_COLUMNS = [Column("id", "name"), Column("num_rows", "rows", lambda v: f"{v:,}"), Column("version"),
                 Column("num_versions", "versions", priority=3), Column("size_bytes", "size", size, priority=2),
                 Column("updated_at", "updated", ago, priority=2)]
MODEL_COLUMNS = [Column("id", "name"), Column("version"), Column("summary", "metrics", priority=2),
                 Column("aliases", "aliases", _aliases, priority=3), Column("num_versions", "versions", priority=4),
                 Column("size_bytes", "size", size, priority=4), Column("updated_at", "updated", ago, priority=3)]
VERSION_COLUMNS = [Column("version"), Column("timestamp", "created", ago), Column("created_by", "by", priority=3),
                   Column("aliases", priority=2), Column("summary", "metrics", priority=2)]


def cmd_tables(args: argparse.Namespace) -> int:
    client = _client()
    kind, fmt = args.kind, chosen_format(args)
    if args.action == "ls":
        if kind == "datasets":
            print_rows(client.list_datasets(), TABLE_COLUMNS, fmt, "datasets")
        else:
            rows = client.list_models()
            for row in rows if fmt not in ("json", "yaml") else ():
                row["summary"] = compact_metrics(row.get("metrics", {}))
            print_rows(rows, MODEL_COLUMNS, fmt, "models")
    elif args.action == "show":
        print_value(client.get_dataset(args.name) if kind == "datasets" else client.get_model(args.name), fmt)
    elif args.action == "versions":
        _versions(client, kind, args.name, fmt)
    elif args.action == "rm":
        (client.delete_dataset if kind == "datasets" else client.delete_model)(args.name)
        print(f"deleted {kind[:-1]} {args.name}")
    elif args.action == "deploy":
        options = {key: getattr(args, key) for key in DEPLOY_OPTIONS if getattr(args, key) is not None}
        client.deploy(args.name, **options)
        served = next((m for m in client.inference.index() if m["name"] == args.name), {})
        if fmt in ("json", "yaml"):
            print_value(served, fmt)
        else:
            print(f"model {args.name} version {served.get('version', '?')}: {served.get('state', '?')} "
                  f"{served.get('reason', '')}".rstrip())
    elif args.action == "alias":
        if args.delete:
            shown = client.delete_alias(args.name, args.alias)
        elif args.version is None:
            print("give the VERSION the alias points to, or --delete", file=sys.stderr)
            return 2
        else:
            shown = client.set_alias(args.name, args.alias, args.version)
        aliases = ", ".join(f"{a} -> {v}" for a, v in shown["aliases"].items()) or "none"
        print(f"model {args.name} aliases: {aliases}")
    elif args.action == "gc":
        report = client.collect_garbage(args.name, kind[:-1], keep_versions=args.keep_versions,
                                        min_age_s=args.min_age, dry_run=args.dry_run)
        if fmt in ("json", "yaml"):
            print_value(report, fmt)
        else:
            verb = "would remove" if report["dry_run"] else "removed"
            versions = ", ".join(map(str, report["removed_versions"])) or "none"
            print(f"{kind[:-1]} {args.name}: {verb} {report['removed_files']} files "
                  f"({report['removed_bytes']:,} bytes) and versions: {versions}; "
                  f"kept {report['kept_unreferenced_files']} unreferenced files younger than the safe age")
    elif args.action == "predict":
        return _predict(client, args, fmt)
    return 0


def _versions(client: Any, kind: str, name: str, fmt: str) -> None:
    """A table's versions (the REST API's shape); for people, a model's aliases and metrics beside each."""
    rows = client.dataset_versions(name) if kind == "datasets" else client.model_versions(name)
    if kind == "models" and fmt not in ("json", "yaml"):
        aliases = client.get_model(name)["aliases"]
        for row in rows:
            row["aliases"] = ", ".join(a for a, v in sorted(aliases.items()) if v == row["version"])
            row["summary"] = compact_metrics(client.get_model(name, row["version"]).get("metrics", {}))
    columns = VERSION_COLUMNS if kind == "models" else [c for c in VERSION_COLUMNS if c.field not in (
        "aliases", "summary")]
    print_rows(rows, columns, fmt, f"{name} versions")


# -- predict -------------------------------------------------------------------------------

PREDICTION_COLUMNS = [Column("source"), Column("prediction"), Column("confidence", show=lambda v: f"{v:.1%}"),
                      Column("label", priority=2), Column("correct", priority=2)]


def _probabilities(scores: Any) -> Any:
    """Scores as probabilities: kept when each row already sums to 1, else a softmax of the logits."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if (scores >= 0).all() and np.allclose(scores.sum(1), 1, atol=1e-3):
        return scores
    shifted = np.exp(scores - scores.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def _model_input(client: Any, name: str, version: str) -> tuple[list[int], list[str] | None]:
    """The served model's input shape (batch first) and its class labels."""
    from ai_platform.protos.inference import grpc_service_pb2 as inference_pb

    metadata = client.inference.stub.ModelMetadata(inference_pb.ModelMetadataRequest(name=name, version=version))
    labels = None
    for tensor in metadata.outputs[:1]:
        if "labels" in tensor.parameters:
            try:
                labels = [str(label) for label in json.loads(tensor.parameters["labels"].string_param)]
            except (ValueError, TypeError):
                labels = None
    return list(metadata.inputs[0].shape), labels


def _predict(client: Any, args: argparse.Namespace, fmt: str) -> int:
    import numpy as np

    from ai_platform.cli.images import ImageError, load_digit

    if bool(args.images) == bool(args.dataset):
        print("aip models predict: give IMAGE files or --dataset NAME (not both)", file=sys.stderr)
        return 2
    version = str(args.version or "")
    shape, labels = _model_input(client, args.name, version)
    if args.images:
        try:
            batch = np.concatenate([load_digit(Path(p)) for p in args.images]).astype(np.float32)
        except ImageError as exc:
            print(f"aip models predict: {exc}", file=sys.stderr)
            return 2
        sources, truth = list(args.images), [None] * len(args.images)
    else:
        table = client.read_dataset(args.dataset, filter=args.filter, limit=args.limit)
        if args.column not in table.column_names:
            print(f"aip models predict: dataset {args.dataset} has no column {args.column!r} (it has "
                  f"{', '.join(table.column_names)}; choose one with --column)", file=sys.stderr)
            return 2
        pixels = table.column(args.column).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        batch = pixels.astype(np.float32) / (255 if pixels.dtype == np.uint8 else 1)
        sources = [f"#{i}" for i in range(table.num_rows)]  # the order read, after the filter
        truth = table.column("label").to_pylist() if "label" in table.column_names else [None] * table.num_rows
    per_item = int(np.prod([d for d in shape[1:] if d > 0])) if len(shape) > 1 else batch[0].size
    if batch.size % per_item:
        print(f"aip models predict: {args.name} takes inputs of shape {shape[1:]}, which these are not",
              file=sys.stderr)
        return 2
    batch = batch.reshape(-1, *[d if d > 0 else 1 for d in shape[1:]])
    probabilities = _probabilities(client.predict(args.name, batch, version))
    rows = []
    for source, label, p in zip(sources, truth, probabilities, strict=True):
        best = int(p.argmax())
        shown = labels[best] if labels and best < len(labels) else best
        row = {"source": source, "prediction": shown, "confidence": float(p[best])}
        if label is not None:
            row.update(label=label, correct=str(label) == str(shown))
        rows.append(row)
    columns = PREDICTION_COLUMNS if any(r.get("label") is not None for r in rows) else PREDICTION_COLUMNS[:3]
    where = f" on {args.dataset}" + (f" where {args.filter}" if args.filter else "") if args.dataset else ""
    print_rows(rows, columns, fmt, f"{args.name} predictions{where}")
    judged = [r["correct"] for r in rows if "correct" in r]
    if judged and fmt not in ("json", "yaml"):
        print(f"accuracy {sum(judged) / len(judged):.2%} on {len(judged)} rows", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    for kind in ("datasets", "models"):
        parser = sub.add_parser(kind, help=f"{kind} in the lake")
        actions = parser.add_subparsers(dest="action", required=True)
        add_output(actions.add_parser("ls", help=f"every {kind[:-1]}: rows, version, size, last write"))
        for action, text in (("show", "one table: schema, rows, size, versions, metadata"
                                      + (", metrics, lineage, aliases" if kind == "models" else "")),
                             ("versions", "every version: when, by whom" + (
                                 ", its aliases and metrics" if kind == "models" else ""))):
            shown = actions.add_parser(action, help=text)
            shown.add_argument("name", help=f"the {kind[:-1]}'s name")
            add_output(shown)
        rm = actions.add_parser("rm", help=f"delete a {kind[:-1]} with all its versions")
        rm.add_argument("name", help=f"the {kind[:-1]}'s name")
        if kind == "models":
            deploy = actions.add_parser("deploy", help="load (or hot-swap to) a model version in inference_svc")
            deploy.add_argument("name", help="the model's name")
            for option, (kind_of, text) in DEPLOY_OPTIONS.items():
                deploy.add_argument(f"--{option.replace('_', '-')}", type=kind_of, help=text)
            add_output(deploy)
            alias = actions.add_parser("alias", help="point an alias (e.g. production) at a version, or --delete it")
            alias.add_argument("name", help="the model's name")
            alias.add_argument("alias", help="the alias, e.g. production (not a number: numbers are versions)")
            alias.add_argument("version", nargs="?", type=int, help="the version it points to")
            alias.add_argument("--delete", action="store_true", help="remove the alias")
            predict = actions.add_parser(
                "predict", help="predict with a served model: picture files (prepared as the digit page prepares "
                                "a drawing) or a dataset's rows")
            predict.add_argument("name", help="the served model's name")
            predict.add_argument("images", nargs="*", metavar="IMAGE",
                                 help="PNG, JPEG or other picture files of one digit each (dark on light or light "
                                      "on dark, any size)")
            predict.add_argument("--dataset", default="", metavar="NAME", help="predict rows of this dataset instead")
            predict.add_argument("--column", default="image", help="the dataset's input column (default image)")
            predict.add_argument("--filter", default="", help="which rows, e.g. \"split = 'test'\"")
            predict.add_argument("--limit", type=int, default=10, help="most rows of the dataset (default 10)")
            predict.add_argument("--version", default="",
                                 help="a version number or alias (default: the newest the model serves)")
            add_output(predict)
        gc = actions.add_parser("gc", help="free storage: files no version references, old versions on request")
        gc.add_argument("name", help=f"the {kind[:-1]}'s name")
        gc.add_argument("--keep-versions", type=int, default=0, metavar="N",
                        help="also remove every version but the newest N (default 0: keep all versions)")
        gc.add_argument("--min-age", type=int, default=None, metavar="SECONDS",
                        help="keep unreferenced files younger than this; a write in progress made them "
                             "(default 3600)")
        gc.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
        add_output(gc)
        parser.set_defaults(func=cmd_tables, kind=kind)
