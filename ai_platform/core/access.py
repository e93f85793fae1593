"""AccessService, offered by every gRPC service beside its own: who the caller is, and tokens for people (admin)."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from ai_platform.core.auth import Authority, Principal, Role, caller
from ai_platform.core.errors import InvalidArgument
from ai_platform.core.names import validate_name
from ai_platform.protos.aiplatform.v1 import access_pb2 as pb
from ai_platform.protos.aiplatform.v1 import access_pb2_grpc

MAX_TOKEN_TTL_S = 366 * 24 * 3600


def identity(principal: Principal, authority: Authority) -> pb.Identity:
    message = pb.Identity(subject=principal.subject, role="task" if principal.is_task else principal.role.label,
                          task_id=principal.task_id, open=not authority.enabled)
    if principal.expires is not None:
        expires = Timestamp()
        expires.FromSeconds(int(principal.expires))
        message.expires_at.CopyFrom(expires)
    return message


class AccessServicer(access_pb2_grpc.AccessServiceServicer):
    def __init__(self, authority: Authority) -> None:
        self.authority = authority

    async def WhoAmI(self, request: pb.WhoAmIRequest, context: grpc.aio.ServicerContext) -> pb.Identity:
        return identity(caller(), self.authority)

    async def CreateToken(self, request: pb.CreateTokenRequest,
                          context: grpc.aio.ServicerContext) -> pb.CreateTokenResponse:
        name = validate_name(request.name, "token name")
        try:
            role = Role.named(request.role)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if not 0 < request.ttl_s <= MAX_TOKEN_TTL_S:
            raise InvalidArgument(f"ttl_s must be above 0 and at most {MAX_TOKEN_TTL_S} (a year), got "
                                  f"{request.ttl_s:g}")
        if not self.authority.key:
            raise InvalidArgument("this platform signs no tokens: set AIP_TOKEN or AIP_AUTH_KEY on its services")
        token = self.authority.person_token(name, role, request.ttl_s)
        return pb.CreateTokenResponse(token=token, identity=identity(self.authority.verify(f"Bearer {token}"),
                                                                     self.authority))


def access_servicer(authority: Authority) -> Any:
    """The AccessService entry for ``ai_platform.core.server.serve``."""
    from ai_platform.core.server import Servicer

    return Servicer(AccessServicer(authority), access_pb2_grpc.add_AccessServiceServicer_to_server,
                    pb.DESCRIPTOR.services_by_name["AccessService"])
