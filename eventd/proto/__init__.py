"""Generated protobuf and gRPC modules for Falco's legacy gRPC API.

Made from ``proto/*.proto`` by ``tools/protogen.py``; never edit them
by hand, regenerate.  ``tests/test_proto.py`` fails when they drift.
"""
