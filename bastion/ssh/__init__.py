"""SSH front-end: the asyncssh server, login routing, the target menu and channel handling."""
