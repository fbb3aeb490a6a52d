"""mdiexit: early-exit, model-distributed DNN inference across a network of edge devices."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from mdiexit import Client` without importing the client (and zmq) for every other use of the package
    if name in ("Client", "Prediction", "ServiceError"):
        from mdiexit import client

        return getattr(client, name)
    raise AttributeError(f"module 'mdiexit' has no attribute {name!r}")
