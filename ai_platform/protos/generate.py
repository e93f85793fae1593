"""Regenerate the Python gRPC stubs from ``protos/`` (the single source of truth).

Run ``python -m ai_platform.protos.generate`` after editing a ``.proto`` file.
protoc writes imports as top-level packages (``from aiplatform.v1 import ...``);
they are rewritten to live under ``ai_platform.protos`` so the stubs ship inside
the shared package instead of claiming generic top-level names like ``inference``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "protos"
STUB_ROOT = Path(__file__).resolve().parent
PROTO_PACKAGES = ("aiplatform", "inference")
_IMPORT = re.compile(rf"^(from|import) ({'|'.join(PROTO_PACKAGES)})(\.| )", re.MULTILINE)


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Compile every proto into ``out_dir``; return the files written."""
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written = []
        for src in sorted(Path(tmp).rglob("*.py*")):
            rel = src.relative_to(tmp)
            dst = out_dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            text = _IMPORT.sub(lambda m: f"{m[1]} ai_platform.protos.{m[2]}{m[3]}", src.read_text())
            dst.write_text(text)
            written.append(dst)
        package_dirs = {d for p in written for d in p.parents if out_dir in d.parents}
        for package_dir in package_dirs:
            init = package_dir / "__init__.py"
            init.touch()
            written.append(init)
        return sorted(set(written))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=STUB_ROOT, help="where the stubs go (default: in place)")
    args = parser.parse_args(argv)
    if args.out == STUB_ROOT:
        for package in PROTO_PACKAGES:
            shutil.rmtree(STUB_ROOT / package, ignore_errors=True)
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
