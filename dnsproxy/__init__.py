"""The transparent DNS proxy behind DNS rules and toFQDNs (issue 22): reads
pods' queries, answers the denied ones itself, and learns which addresses
the allowed names resolve to. Below the agent, beside xds/ and redirect/;
uses policy/ for names."""
