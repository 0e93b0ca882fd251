"""Generated at build time from ``proto/creditauth/v1/*.proto``: ``authorization_pb2``,
``authorization_pb2_grpc``, ``controls_pb2``, ``controls_pb2_grpc`` and their ``.pyi`` stubs."""
