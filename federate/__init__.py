"""A local federation on loopback: the platform's real Flower processes, no cluster.

`python -m federate` (or `make federate`) starts a TLS SuperLink with SuperNode
authentication, one SuperNode per site of the dev stack, the SuperExec processes
that launch ServerApp and ClientApp tasks, submits the `training/` app with
`flwr run`, follows its rounds, and writes `out/federate/`.
"""
