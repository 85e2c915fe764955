"""Publishing datasets with view/download grants (not built yet: see README)."""
