"""The flat functional namespace, like ``torch.nn.functional``: every op of logitlab by name."""

__all__: list[str] = []
