"""Local stand-ins for the upstream services Forage talks to, on 127.0.0.1.

Each fake speaks its service's real wire format (npm registry and replication feed, PyPI's
simple/JSON/XML-RPC APIs, the Go module proxy, index and checksum database, Kubo RPC, IPFS
Cluster, the IPFS Pinning Service API, an IPFS trustless gateway) so Forage's own clients run
unchanged against them.
``forage demo`` starts them to give a first run with no network; the test suite starts them
to exercise every code path, including faults (:class:`~indexers.fakeserver.Faults`).
"""
