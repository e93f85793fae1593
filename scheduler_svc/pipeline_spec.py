"""What a pipeline is: a definition parsed from plain JSON (or YAML) into steps and triggers, checked whole.

A definition is refused with the step or field named (a cycle, an unknown step, two steps writing one output, an
unknown field, a bad trigger), before anything is stored. Plain values; no protobuf, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ai_platform.core.errors import InvalidArgument
from ai_platform.core.limits import check_params
from ai_platform.core.names import validate_name
from scheduler_svc.tasks import Resources

DEFINITION_FIELDS = {"steps", "on", "max_concurrent_runs", "description"}
STEP_FIELDS = {"name", "script", "input", "inputs", "output", "params", "resources", "timeout_s", "cache"}
RESOURCE_FIELDS = {"num_cpus", "num_gpus", "memory_mb", "custom"}
DATASET_TRIGGER_FIELDS = {"dataset", "min_interval_s", "min_new_rows"}
MAX_STEPS = 100
STEP_OUTPUT = re.compile(r"^steps\.(?P<step>[^.]+)\.output$")
LAKE_OUTPUT = re.compile(r"^(?P<table>(?:datasets|models)/[^/@]+)(?:@(?P<alias>[^/@]+))?$")


@dataclass(frozen=True)
class Step:
    """One task of the graph. ``input`` and each of ``inputs`` is a lake reference, ``steps.NAME.output`` or a
    path; ``output`` is a lake table (``datasets/NAME``, ``models/NAME``), a model's alias (``models/NAME@ALIAS``:
    the step may move it) or empty."""

    name: str
    script: str
    input: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    output: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    timeout_s: float = 0.0
    cache: bool = True

    def upstream(self) -> list[str]:
        """The steps whose outputs this one reads, in the order it names them."""
        refs = [self.input, *self.inputs.values()]
        return list(dict.fromkeys(m["step"] for ref in refs if (m := STEP_OUTPUT.match(ref))))


@dataclass(frozen=True)
class DatasetTrigger:
    """Run when ``dataset`` has a new version with at least ``min_new_rows`` more rows, at most once per
    ``min_interval_s``."""

    dataset: str
    min_interval_s: float = 0.0
    min_new_rows: int = 1

    def describe(self) -> str:
        return f"dataset {self.dataset}"


@dataclass(frozen=True)
class ScheduleTrigger:
    cron: str

    def describe(self) -> str:
        return f"schedule {self.cron}"


Trigger = DatasetTrigger | ScheduleTrigger


@dataclass(frozen=True)
class Definition:
    steps: list[Step]
    triggers: list[Trigger] = field(default_factory=list)
    max_concurrent_runs: int = 1
    description: str = ""

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


def _unknown(given: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(given) - allowed)
    if extra:
        raise InvalidArgument(f"{where}: unknown field{'s' if len(extra) > 1 else ''} {', '.join(extra)} "
                              f"(allowed: {', '.join(sorted(allowed))})")


def _typed(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float, (int, float))):
        raise InvalidArgument(f"{where} must be {what}, got {value!r}")
    return value


def _resources(raw: Any, where: str) -> Resources:
    _typed(raw, dict, where, "an object")
    _unknown(raw, RESOURCE_FIELDS, where)
    numbers = {k: float(_typed(raw[k], (int, float), f"{where}.{k}", "a number"))
               for k in ("num_cpus", "num_gpus") if k in raw}
    if any(v < 0 for v in numbers.values()):
        raise InvalidArgument(f"{where}: resources must not be negative")
    memory = int(_typed(raw.get("memory_mb", 0), (int, float), f"{where}.memory_mb", "a number"))
    custom = _typed(raw.get("custom", {}), dict, f"{where}.custom", "an object")
    amounts = {validate_name(k, "custom resource name"): float(_typed(v, (int, float), f"{where}.custom.{k}",
                                                                       "a number")) for k, v in custom.items()}
    return Resources(memory_mb=memory, custom=amounts, **numbers)


def parse_step(raw: Any, index: int) -> Step:
    where = f"steps[{index}]"
    _typed(raw, dict, where, "an object")
    if "name" not in raw or "script" not in raw:
        raise InvalidArgument(f"{where} needs a name and a script")
    name = validate_name(_typed(raw["name"], str, f"{where}.name", "a string"), "step name")
    where = f"step '{name}'"
    _unknown(raw, STEP_FIELDS, where)
    texts = {k: _typed(raw.get(k, ""), str, f"{where}.{k}", "a string") for k in ("script", "input", "output")}
    if not texts["script"]:
        raise InvalidArgument(f"{where}: script is required")
    inputs = _typed(raw.get("inputs", {}), dict, f"{where}.inputs", "an object of name: reference")
    for key, ref in inputs.items():
        validate_name(key, f"{where} input name")
        _typed(ref, str, f"{where}.inputs.{key}", "a string")
    params = _typed(raw.get("params", {}), dict, f"{where}.params", "an object")
    if "inputs" in params and inputs:
        raise InvalidArgument(f"{where}: params.inputs is where the step's inputs are passed; do not set it")
    check_params(params)
    output = texts["output"]
    if output and not LAKE_OUTPUT.match(output):
        raise InvalidArgument(f"{where}: output {output!r} must be datasets/NAME, models/NAME or models/NAME@ALIAS")
    if output.startswith("datasets/") and "@" in output:
        raise InvalidArgument(f"{where}: output {output!r}: only a model's alias may be a step's output")
    timeout = float(_typed(raw.get("timeout_s", 0), (int, float), f"{where}.timeout_s", "a number"))
    if timeout < 0:
        raise InvalidArgument(f"{where}: timeout_s must not be negative")
    return Step(name=name, script=texts["script"], input=texts["input"].strip(), inputs=dict(inputs), output=output,
                params=dict(params), resources=_resources(raw.get("resources", {}), f"{where}.resources"),
                timeout_s=timeout, cache=bool(_typed(raw.get("cache", True), bool, f"{where}.cache", "true or false")))


def parse_trigger(raw: Any, index: int) -> Trigger:
    where = f"on[{index}]"
    _typed(raw, dict, where, "an object: {dataset: NAME} or {cron: EXPRESSION}")
    if "cron" in raw:
        _unknown(raw, {"cron"}, where)
        expression = _typed(raw["cron"], str, f"{where}.cron", "a string")
        from croniter import croniter

        if not croniter.is_valid(expression):
            raise InvalidArgument(f"{where}.cron: {expression!r} is not a cron expression (five fields: minute hour "
                                  f"day-of-month month day-of-week, e.g. '0 3 * * *'; a sixth is seconds)")
        return ScheduleTrigger(expression)
    if "dataset" not in raw:
        raise InvalidArgument(f"{where} needs dataset or cron")
    _unknown(raw, DATASET_TRIGGER_FIELDS, where)
    dataset = validate_name(_typed(raw["dataset"], str, f"{where}.dataset", "a dataset name"), "dataset name")
    interval = float(_typed(raw.get("min_interval_s", 0), (int, float), f"{where}.min_interval_s", "a number"))
    rows = int(_typed(raw.get("min_new_rows", 1), int, f"{where}.min_new_rows", "a whole number"))
    if interval < 0 or rows < 1:
        raise InvalidArgument(f"{where}: min_interval_s must be >= 0 and min_new_rows >= 1")
    return DatasetTrigger(dataset, interval, rows)


def parse_definition(raw: Any) -> Definition:
    """The definition, checked whole: every problem is an InvalidArgument naming the step or field."""
    _typed(raw, dict, "the definition", "an object")
    _unknown(raw, DEFINITION_FIELDS, "the definition")
    steps_raw = _typed(raw.get("steps"), list, "steps", "a list of steps")
    if not steps_raw or len(steps_raw) > MAX_STEPS:
        raise InvalidArgument(f"steps: a pipeline has 1 to {MAX_STEPS} steps, got {len(steps_raw)}")
    steps = [parse_step(s, i) for i, s in enumerate(steps_raw)]
    names = [s.name for s in steps]
    for name in names:
        if names.count(name) > 1:
            raise InvalidArgument(f"step '{name}' is defined twice")
    writers: dict[str, str] = {}
    for step in steps:
        if step.output in writers:
            raise InvalidArgument(f"steps '{writers[step.output]}' and '{step.name}' both write {step.output}")
        if step.output:
            writers[step.output] = step.name
        for ref in [step.input, *step.inputs.values()]:
            match = STEP_OUTPUT.match(ref)
            if ref.startswith("steps.") and not match:
                raise InvalidArgument(f"step '{step.name}': {ref!r} is not a step's output (steps.NAME.output)")
            if match and match["step"] not in names:
                raise InvalidArgument(f"step '{step.name}' reads {ref}, but there is no step '{match['step']}'")
            if match and match["step"] == step.name:
                raise InvalidArgument(f"step '{step.name}' reads its own output")
            if match and not LAKE_OUTPUT.match(next(s.output for s in steps if s.name == match["step"])):
                raise InvalidArgument(f"step '{step.name}' reads {ref}, but step '{match['step']}' writes no lake "
                                      f"table")
    for step in steps:  # a step reading a table another step writes must say so: it would race otherwise
        for ref in [step.input, *step.inputs.values()]:
            if ref in writers and writers[ref] != step.name:
                raise InvalidArgument(f"step '{step.name}' reads {ref}, which step '{writers[ref]}' writes: read "
                                      f"steps.{writers[ref]}.output instead")
    _check_acyclic(steps)
    triggers_raw = raw.get("on", [])
    if isinstance(triggers_raw, dict):
        triggers_raw = [triggers_raw]
    triggers = [parse_trigger(t, i) for i, t in enumerate(_typed(triggers_raw, list, "on", "a list of triggers"))]
    concurrent = _typed(raw.get("max_concurrent_runs", 1), int, "max_concurrent_runs", "a whole number")
    if not 1 <= concurrent <= 100:
        raise InvalidArgument(f"max_concurrent_runs must be 1 to 100, got {concurrent}")
    description = _typed(raw.get("description", ""), str, "description", "a string")
    return Definition(steps, triggers, concurrent, description)


def _check_acyclic(steps: list[Step]) -> None:
    """Kahn's algorithm; what is left over lies on a cycle, which is named."""
    needs = {s.name: set(s.upstream()) for s in steps}
    done: set[str] = set()
    while True:
        ready = [n for n, ups in needs.items() if n not in done and ups <= done]
        if not ready:
            break
        done.update(ready)
    left = [n for n in needs if n not in done]
    if left:
        raise InvalidArgument(f"the steps {', '.join(left)} form a cycle (each waits for another's output)")
