"""The agent's REST API: the aiohttp server and its route table (server.py),
the OpenAPI document rendered from that table (openapi.py), and the client the
CLI and the CNI plugin use (client.py). Socket I/O."""
