"""Library shared by pteleport, pctl and ptsh: errors, identity, TLS, API client, profiles."""

__version__ = "0.1.0"
