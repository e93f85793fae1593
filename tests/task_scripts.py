"""Task scripts that the scheduler tests run: each is what a platform user might write, good or broken."""

SCRIPTS = {
    "trivial.py": '''
def run(input_path, output_path, params):
    return {"input": input_path, "output": output_path, "params": params,
            "types": {k: type(v).__name__ for k, v in params.items()}}
''',
    "metrics.py": '''
import time
from ai_platform.sdk import log_metrics

def run(input_path, output_path, params):
    for step in range(params.get("points", 100)):
        log_metrics({"loss": 1.0 / (step + 1), "accuracy": step / 1000})
    log_metrics({"late": 3.0}, step=7)
    log_metrics({"late": 1.0}, step=2)   # out of order: kept, sorted when read
    log_metrics({"loss": float("nan"), "accuracy": "high"})  # refused, said on stderr; the task goes on
    log_metrics({"bad key!": 1.0})
    log_metrics([("loss", 1.0)])
    for _ in range(params.get("live", 0)):  # points that arrive while the task runs
        log_metrics({"live": time.time()})
        time.sleep(0.2)
    return {"logged": True}
''',
    "lineage.py": '''
import time
import torch
from ai_platform.sdk import open_dataset, save_model

def run(input_path, output_path, params):
    time.sleep(params.get("pause", 0))  # the test overwrites the input meanwhile
    rows = open_dataset(input_path).count_rows()
    save_model(torch.nn.Linear(2, 2), output_path, torch.zeros(1, 2), params=params)
    return {"rows": rows}
''',
    "progress.py": '''
import time
from ai_platform.sdk import report_progress

def run(input_path, output_path, params):
    steps = params.get("steps", 3)
    for i in range(steps):
        print(f"epoch {i} starting", flush=True)
        time.sleep(params.get("pause", 0.3))
        report_progress((i + 1) / steps, f"epoch {i + 1}/{steps}", {"loss": 1.0 / (i + 1), "epoch": i + 1})
    print("done training", flush=True)
    return {"epochs": steps}
''',
    "sleeper.py": '''
import os, subprocess, sys, time

def run(input_path, output_path, params):
    child = subprocess.Popen(["sleep", "1000"])
    escaped = subprocess.Popen(["sleep", "1001"], env={}, start_new_session=True)  # left the group, no task env
    if params.get("pidfile"):
        with open(params["pidfile"], "w") as f:
            f.write(f"{os.getpid()} {child.pid} {escaped.pid}")
    print("sleeping", flush=True)
    time.sleep(params.get("seconds", 1000))
    child.kill()
    escaped.kill()
    return {"slept": params.get("seconds")}
''',
    "stubborn.py": '''
import os, signal, time

def run(input_path, output_path, params):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(params["pidfile"], "w") as f:
        f.write(str(os.getpid()))
    print("ignoring SIGTERM", flush=True)
    time.sleep(1000)
''',
    "nap.py": '''
import time

def run(input_path, output_path, params):
    began = time.time()
    time.sleep(params.get("seconds", 1))
    return {"slept": params.get("seconds", 1), "began": began, "ended": time.time()}
''',
    "syntax_error.py": "def run(input_path, output_path, params:\n    return {}\n",
    "no_run.py": "def walk(input_path, output_path, params):\n    return {}\n",
    "raises.py": '''
def run(input_path, output_path, params):
    raise ValueError("bad value 42")
''',
    "not_json.py": '''
def run(input_path, output_path, params):
    return {"values": {1, 2, 3}}
''',
    "exits.py": '''
import sys

def run(input_path, output_path, params):
    sys.exit(3)
''',
    "hard_exit.py": '''
import os

def run(input_path, output_path, params):
    os._exit(7)
''',
    "killed.py": '''
import os, signal

def run(input_path, output_path, params):
    # What the kernel's OOM killer does to a process: SIGKILL, no chance to report.
    os.kill(os.getpid(), signal.SIGKILL)
''',
    "hog.py": '''
import time

def run(input_path, output_path, params):
    blocks = []
    for _ in range(params.get("mb", 600) // 50):
        blocks.append(bytearray(50 * 1024 * 1024))
        time.sleep(0.05)
    time.sleep(5)
    return {"allocated_mb": len(blocks) * 50}
''',
    "chatty.py": '''
import sys

def run(input_path, output_path, params):
    line = ("x" * 99 + "\\n").encode()
    out = sys.stdout.buffer
    for i in range(params.get("mb", 40) * 10_000):
        out.write(line)
    out.write(b"END OF OUTPUT\\n")
    out.flush()
    return {"lines": params.get("mb", 40) * 10_000}
''',
    "reads_dataset.py": '''
import lance

def run(input_path, output_path, params):
    return {"rows": lance.dataset(input_path).count_rows()}
''',
}


def write_scripts(directory):  # noqa: ANN001, ANN201 - a pathlib.Path
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in SCRIPTS.items():
        (directory / name).write_text(text.lstrip())
    (directory / "notes.txt").write_text("not a script\n")
    return directory
