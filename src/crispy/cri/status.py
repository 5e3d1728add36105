"""Version, Status, RuntimeConfig, UpdateRuntimeConfig."""

from __future__ import annotations

from typing import Any

from crispy.api import pb
from crispy.runtime_status import RuntimeInfo


class RuntimeInfoCalls:
    SERVICE = "RuntimeService"

    def __init__(self, info: RuntimeInfo) -> None:
        self.info = info

    async def Version(self, request: pb.VersionRequest, context: Any) -> pb.VersionResponse:
        return pb.VersionResponse(**self.info.version())

    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        net = self.info.network()
        conditions = [
            pb.RuntimeCondition(type=c.type, status=c.status, reason=c.reason, message=c.message)
            for c in self.info.conditions(net)
        ]
        handlers = [
            pb.RuntimeHandler(
                name=h.name,
                features=pb.RuntimeHandlerFeatures(
                    recursive_read_only_mounts=h.features.recursive_read_only_mounts,
                    user_namespaces=h.features.user_namespaces,
                ),
            )
            for h in self.info.handlers.values()
        ]
        # As containerd does: the default handler is also listed under the empty name,
        # which is what a pod without a RuntimeClass asks for.
        default = self.info.handlers.get(self.info.cfg.default_runtime)
        if default is not None:
            handlers.insert(
                0,
                pb.RuntimeHandler(
                    name="",
                    features=pb.RuntimeHandlerFeatures(
                        recursive_read_only_mounts=default.features.recursive_read_only_mounts,
                        user_namespaces=default.features.user_namespaces,
                    ),
                ),
            )
        return pb.StatusResponse(
            status=pb.RuntimeStatus(conditions=conditions),
            info=self.info.verbose_info(net) if request.verbose else {},
            runtime_handlers=handlers,
            # SupplementalGroupsPolicy=Strict: only the pod's groups, not the image's
            # /etc/group memberships (oci/spec.py).
            features=pb.RuntimeFeatures(supplemental_groups_policy=True),
        )

    async def RuntimeConfig(
        self, request: pb.RuntimeConfigRequest, context: Any
    ) -> pb.RuntimeConfigResponse:
        driver = pb.SYSTEMD if self.info.cgroup_driver() == "systemd" else pb.CGROUPFS
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=driver))

    async def UpdateRuntimeConfig(
        self, request: pb.UpdateRuntimeConfigRequest, context: Any
    ) -> pb.UpdateRuntimeConfigResponse:
        self.info.update_pod_cidr(request.runtime_config.network_config.pod_cidr)
        return pb.UpdateRuntimeConfigResponse()
