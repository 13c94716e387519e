"""The ServerApp's process (one per run, in the server cluster): the survey, the three training
paths (Message API, SecAgg+, FedBuff), round bookkeeping, strategies, central DP and the run's
artifacts. Imports `common` only, never `client`."""
