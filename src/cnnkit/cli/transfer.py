"""``cnnkit transfer`` sub-commands (placeholder until implemented)."""


def register(subparsers) -> None:
    pass
