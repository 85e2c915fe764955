"""Authentication: identities, levels, factors and the per-connection flow (front-end neutral)."""
