"""Console views: login, my pages, terminal, auditor and admin pages with their JSON API."""
