"""The carer's side, served by the daemon: the event hub (live physiology, results, status, alerts, Home
Assistant state), the dashboard's HTTP server and JSON API, and the page itself (static/)."""
