"""The wire-relevant shape of a proto file; imports no generated stubs, so tritonclient's process can use it."""

from __future__ import annotations

import json

from google.protobuf import descriptor_pb2


def wire_shape(file_descriptor) -> dict:  # noqa: ANN001 - a protobuf FileDescriptor
    """Everything that decides wire compatibility: message, field, number, type, label; services and methods."""
    proto = descriptor_pb2.FileDescriptorProto()
    file_descriptor.CopyToProto(proto)
    messages: dict[str, list] = {}

    def walk(prefix: str, message) -> None:  # noqa: ANN001
        messages[prefix + message.name] = sorted(
            (f.name, f.number, f.type, f.label, f.type_name.rsplit(".", 1)[-1]) for f in message.field
        )
        for nested in message.nested_type:
            walk(prefix + message.name + ".", nested)

    for message in proto.message_type:
        walk("", message)
    services = {
        s.name: sorted((m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming) for m in s.method)
        for s in proto.service
    }
    enums = {e.name: sorted((v.name, v.number) for v in e.value) for e in proto.enum_type}
    return json.loads(
        json.dumps({"package": proto.package, "messages": messages, "services": services, "enums": enums})
    )
