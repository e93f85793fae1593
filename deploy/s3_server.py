"""moto's S3 server behind MinIO's command line: ``server DIR [--address HOST:PORT]`` (DIR is not used: moto keeps
objects in memory). The compose file's S3 store runs this or MinIO unchanged."""

import argparse

from moto.server import main

parser = argparse.ArgumentParser(prog="s3_server")
parser.add_argument("mode", choices=["server"])
parser.add_argument("directory")
parser.add_argument("--address", default=":9000")
parser.add_argument("--console-address", default="")
args = parser.parse_args()
host, _, port = args.address.rpartition(":")
main(["-H", host or "0.0.0.0", "-p", port])
