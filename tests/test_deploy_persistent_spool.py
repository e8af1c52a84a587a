"""The ``kafka-consumer-persistent`` overlay: the Kafka consumer with a volume per replica.

Issue 18: "if a persistent spool is wanted, offer it as a StatefulSet
variant with a volume per replica."  The overlay reuses the
``kafka-consumer`` overlay whole and swaps its Deployment (spool on an
``emptyDir``) for a StatefulSet whose ``volumeClaimTemplates`` give each
replica a volume of its own.  Rendered with the real ``kubectl kustomize``
and validated strictly like the other overlays (``test_deploy_manifests``);
the pod template must stay the Deployment's, save for the spool's volume, so
that the two variants cannot drift apart (probes, grace period, security
context, the config and its mounts).
"""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml

from eventd.config import Config, build
from tests.test_deploy_manifests import K8S, K8S_VERSION, eventd_container, find, only, overlay, pod_spec

NAME = "kafka-consumer-persistent"
WORKLOAD = "eventd-kafka-consumer"
STATE = "eventd-state"


def statefulset() -> dict[str, Any]:
    return only(overlay(NAME), "StatefulSet", WORKLOAD)


def config_of_the_consumer() -> Config:
    data = yaml.safe_load((K8S / "overlays" / "kafka-consumer" / "eventd.yaml").read_text(encoding="utf-8"))
    return build(Config, data, "")


def mebibytes(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2]) * 2**20


def test_every_rendered_object_validates_strictly() -> None:
    for obj in overlay(NAME):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_a_statefulset_replaces_the_deployment_in_the_same_namespace() -> None:
    objs = overlay(NAME)
    assert find(objs, "Deployment") == []
    assert statefulset()["metadata"]["namespace"] == "eventd"
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {"eventd"}
    # The same ConfigMaps as the kafka-consumer overlay (the same config, the same rules).
    for name in ("eventd-config", "eventd-rules"):
        (mine,) = [o for o in find(objs, "ConfigMap") if o["metadata"]["name"].startswith(name)]
        (theirs,) = [
            o for o in find(overlay("kafka-consumer"), "ConfigMap") if o["metadata"]["name"].startswith(name)
        ]
        assert mine == theirs


def test_the_pod_is_the_deployments_save_for_the_spool_volume() -> None:
    deployment = only(overlay("kafka-consumer"), "Deployment", WORKLOAD)
    expected = copy.deepcopy(deployment["spec"]["template"])
    volumes = expected["spec"]["volumes"]
    (state,) = [v for v in volumes if v["name"] == STATE]
    assert "emptyDir" in state  # what this overlay replaces
    volumes.remove(state)
    assert statefulset()["spec"]["template"] == expected
    assert statefulset()["spec"]["selector"] == deployment["spec"]["selector"]


def test_each_replica_gets_a_volume_the_spool_fits_on() -> None:
    workload = statefulset()
    (claim,) = workload["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == STATE
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]  # one replica's, nobody else's
    config = config_of_the_consumer()
    assert config.sinks.kafka is not None
    assert config.sinks.kafka.spool_max_bytes < mebibytes(claim["spec"]["resources"]["requests"]["storage"])
    # The spool directory lies on that volume.
    (mount,) = [m for m in eventd_container(pod_spec(workload))["volumeMounts"] if m["name"] == STATE]
    assert config.sinks.kafka.spool_dir.is_relative_to(mount["mountPath"])
    assert not mount.get("readOnly", False)


def test_volumes_outlive_scale_in_and_the_autoscaler_drives_the_statefulset() -> None:
    workload = statefulset()
    spec = workload["spec"]
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenScaled": "Retain", "whenDeleted": "Retain"}
    assert "replicas" not in spec  # the HorizontalPodAutoscaler owns the count
    hpa = only(overlay(NAME), "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": WORKLOAD}
    assert hpa["spec"]["minReplicas"] > 1


@pytest.mark.parametrize("overlay_name", ["kafka-consumer", NAME])
def test_termination_grace_covers_the_shutdown_grace(overlay_name: str) -> None:
    """Scale-in (SIGTERM): the drain and final commit fit in eventd's grace,
    which fits in the pod's."""
    objs = overlay(overlay_name)
    (workload,) = [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]
    config = config_of_the_consumer()
    assert config.sources.kafka is not None
    assert config.sources.kafka.drain_timeout_seconds < config.shutdown_grace_seconds
    assert pod_spec(workload)["terminationGracePeriodSeconds"] > config.shutdown_grace_seconds
