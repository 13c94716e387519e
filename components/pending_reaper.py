"""Delete launched task pods that never start, so they stop holding the executor's pod budget.

Flower's Kubernetes executor counts every Pending pod against `active-pod-budget` and has no
pending timeout: a task pod that no node fits, or whose image cannot be pulled, would stop the
site taking tasks for good. This loop runs next to SuperExec (same pod, same ServiceAccount),
mounted from a ConfigMap into the platform image; it imports only the standard library and the
`kubernetes` client that image ships for Flower's executor:

    python pending_reaper.py --namespace NS --selector LABELS --timeout SECONDS

Every `--interval` seconds it lists the pods matching LABELS in NS and deletes each one that is
still not running `--timeout` seconds after its creation, and at once each one with a container
that cannot start (its image cannot be pulled, its config is broken: waiting fixes neither, as
NVIDIA FLARE also fails image-pull errors at once), recording a Warning Event on the pod (reason
`TaskPodStuck`) and one log line. The executor then sees a free slot, and its own sweep deletes
the task's orphaned credential Secret.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

EVENT_REASON = "TaskPodStuck"
COMPONENT = "flowerbed-pending-reaper"
# Container waiting reasons that no amount of waiting fixes without someone changing something.
FAILED_START = ("ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "InvalidImageName")
# The API server rejects longer Event messages.
_MESSAGE_LIMIT = 1024


def _explained(reason: str, message: str | None) -> str:
    return f"{reason}: {message}" if message else reason


def stuck(pod: Mapping[str, Any], now: datetime, timeout: float) -> str | None:
    """Why `pod` (the API's JSON) should be deleted at `now`, or None while it may still start.

    A pod is stuck at once when a container cannot start (FAILED_START), and once it is older
    than `timeout` seconds while still Pending; the answer names the most specific cause the
    status gives.
    """
    metadata, status = pod["metadata"], pod.get("status") or {}
    if metadata.get("deletionTimestamp"):
        return None
    if status.get("phase") in (None, "Pending"):
        for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in FAILED_START:
                return f"container {container['name']}: {_explained(waiting['reason'], waiting.get('message'))}"
    created = datetime.fromisoformat(metadata["creationTimestamp"].replace("Z", "+00:00"))
    if (now - created).total_seconds() <= timeout:
        return None
    if status.get("phase") != "Pending":
        return None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason"):
            return _explained(cond["reason"], cond.get("message"))
    return "Pending"


def age(pod: Mapping[str, Any], now: datetime) -> int:
    created = datetime.fromisoformat(pod["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    return int((now - created).total_seconds())


def event(pod: Mapping[str, Any], message: str, now: datetime) -> dict[str, Any]:
    """A core/v1 Warning Event about `pod` (what `kubectl describe pod` and `get events` show)."""
    metadata = pod["metadata"]
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{metadata['name']}.{time.time_ns():x}", "namespace": metadata["namespace"]},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": metadata["name"],
                           "namespace": metadata["namespace"], "uid": metadata["uid"]},
        "type": "Warning", "reason": EVENT_REASON, "message": message[:_MESSAGE_LIMIT],
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
        "reportingInstance": socket.gethostname(),
    }


def reap(api: Any, namespace: str, selector: str, timeout: float) -> None:
    """One pass: delete every stuck pod, record an Event and print a line for each."""
    from kubernetes.client.exceptions import ApiException

    # Plain JSON rather than the client's models: `stuck` reads what `kubectl get -o json` shows.
    listed = api.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
    now = datetime.now(timezone.utc)
    for pod in json.loads(listed.data)["items"]:
        reason = stuck(pod, now, timeout)
        if reason is None:
            continue
        name = pod["metadata"]["name"]
        try:
            # The UID precondition: never a newer pod that took the name meanwhile.
            api.delete_namespaced_pod(name, namespace, body={"preconditions": {"uid": pod["metadata"]["uid"]}})
        except ApiException as err:
            if err.status in (404, 409):  # gone already, or a different pod by now
                continue
            raise
        waited = age(pod, now)
        message = (f"deleted after {waited} s, past its pendingTimeout of {timeout:g} s: {reason}" if waited > timeout
                   else f"deleted after {waited} s, not waiting for its pendingTimeout of {timeout:g} s: {reason}")
        print(f"pending-reaper: pod {namespace}/{name}: {message}", flush=True)
        try:
            api.create_namespaced_event(namespace, event(pod, message, now))
        except ApiException as err:
            print(f"pending-reaper: no Event for pod {namespace}/{name}: {_api_error(err)}", flush=True)


def _api_error(err: Any) -> str:
    """One line for an ApiException (its str() spans the response headers): status and the API's message."""
    try:
        message = json.loads(err.body)["message"]
    except (TypeError, ValueError, KeyError):
        message = err.reason
    return f"{err.status} {message}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--selector", required=True, help="label selector of the executor's task pods")
    parser.add_argument("--timeout", type=float, required=True, help="seconds a pod may take to start")
    parser.add_argument("--interval", type=float, default=10, help="seconds between passes")
    args = parser.parse_args(argv)

    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    config.load_incluster_config()
    api = client.CoreV1Api()
    print(f"pending-reaper: watching pods {args.selector} in {args.namespace}, timeout {args.timeout:g} s",
          flush=True)
    while True:
        try:
            reap(api, args.namespace, args.selector, args.timeout)
        except ApiException as err:
            print(f"pending-reaper: pass failed: {_api_error(err)}", file=sys.stderr, flush=True)
        except HTTPError as err:
            # An API server restart or a network blip: the next pass tries again.
            print(f"pending-reaper: pass failed: {err}", file=sys.stderr, flush=True)
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
