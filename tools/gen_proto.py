"""Regenerate caffe_ft/proto/caffe_pb2.py from proto/caffe.proto.

Needs grpcio-tools (`pip install -e .[dev]`), whose bundled protoc matches the
protobuf runtime we require, so users never need a system protoc. The
generated file records the schema's SHA-256 so a test can tell when it is stale.
"""
from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "proto" / "caffe.proto"
TARGET = ROOT / "caffe_ft" / "proto" / "caffe_pb2.py"
HASH_PREFIX = "# schema-sha256: "


def schema_digest() -> str:
    return hashlib.sha256(SCHEMA.read_bytes()).hexdigest()


def generate() -> str:
    """Return the text of caffe_pb2.py for the current schema."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as out:
        rc = protoc.main(["protoc", f"-I{SCHEMA.parent}", f"--python_out={out}", str(SCHEMA)])
        if rc != 0:
            raise SystemExit(f"protoc failed on {SCHEMA} (exit {rc})")
        body = (Path(out) / "caffe_pb2.py").read_text()
    return f"{HASH_PREFIX}{schema_digest()}\n{body}"


def main() -> int:
    text = generate()
    tmp = TARGET.with_suffix(".py.tmp")
    tmp.write_text(text)
    tmp.replace(TARGET)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
