"""duo-unlearn's host-agnostic core."""
