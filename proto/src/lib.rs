//! gRPC contract of visage (filled in by the server issue).
