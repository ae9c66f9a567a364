"""xDS: the ADS gRPC server and the rendering of compiled L7 policy into Envoy
resources. Network I/O lives in the server modules only."""
