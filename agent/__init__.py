"""agent: the daemon, REST API, CNI plugin and the `ciliate` CLI."""
