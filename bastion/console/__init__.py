"""HTTPS front-end: the aiohttp console and API served on the gateway's single port."""
