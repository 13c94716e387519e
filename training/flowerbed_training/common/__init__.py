"""What the ServerApp and the ClientApp both run: the run config, the message protocol, data,
models and local training. Nothing here imports `server` or `client`."""
