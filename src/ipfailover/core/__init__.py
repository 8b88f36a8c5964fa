"""The sans-I/O core: wire format, authentication, failure detection, the two state machines
and configuration. It imports nothing from the other layers and no I/O module (see
docs/development.md; the contract is in pyproject.toml).
"""
