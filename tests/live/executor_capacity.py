"""Ask Flower's own Kubernetes executor whether it would launch a ClientApp task now.

Run as a script inside the executor's identity (tests.live.conftest.in_cluster), with the path of
the site's live `executor.yaml`; prints one JSON object:

    {"active": <task pods counted against active-pod-budget>, "eligible": [<task types it would launch>]}

`active` comes from the executor's own count, which raises on an API error (RBAC included);
`eligible` is what SuperExec's dispatch loop asks before pulling a task (flwr 1.42,
flwr/supercore/superexec/executor/kubernetes_executor.py).
"""

import json
import sys

import yaml
from flwr.supercore.constant import ExecutorType, TaskType
from flwr.supercore.superexec.executor.factory import get_executor

with open(sys.argv[1]) as file:
    config = yaml.safe_load(file)
executor = get_executor(ExecutorType.KUBERNETES, config)
eligible, _ = executor.get_eligible_capacity({TaskType.CLIENT_APP})
print(json.dumps({"active": executor._active_pod_count(), "eligible": sorted(eligible)}))
