"""pteleport package."""
