"""``cnnkit summary`` and ``cnnkit fit`` (placeholder until implemented)."""


def register(subparsers) -> None:
    pass
