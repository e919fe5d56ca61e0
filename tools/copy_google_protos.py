"""Copy the google.api / google.rpc .proto files our protos import into third_party/.

Why: buf and protoc need the sources to compile imports such as
"google/api/annotations.proto", the Buf Schema Registry (buf.build/googleapis) is
unreachable from our machines, and googleapis-common-protos (a runtime dependency,
which also provides the matching *_pb2 Python modules) ships the .proto files.
Copying from the installed package keeps sources and Python modules at one version.

Usage: python tools/copy_google_protos.py
"""

from __future__ import annotations

import shutil
from importlib.metadata import version
from pathlib import Path

import google.api.annotations_pb2

THIRD_PARTY = Path(__file__).resolve().parent.parent / "third_party"
# Exactly what our protos need, plus what these import in turn (client -> launch_stage).
NEEDED = [
    "google/api/annotations.proto",
    "google/api/http.proto",
    "google/api/field_behavior.proto",
    "google/api/resource.proto",
    "google/api/client.proto",
    "google/api/launch_stage.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
    "google/rpc/code.proto",
]


def main() -> None:
    site_root = Path(google.api.annotations_pb2.__file__).resolve().parent.parent.parent
    print(f"copying from googleapis-common-protos=={version('googleapis-common-protos')}")
    for relative in NEEDED:
        target = THIRD_PARTY / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(site_root / relative, target)
        print(f"  {relative}")


if __name__ == "__main__":
    main()
