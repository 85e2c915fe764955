"""The protocol-neutral session core: live registry, upstream connections, and the bridge."""
