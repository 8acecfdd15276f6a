//! A local HTTP server for archives and manifests, with failure modes (404, 500, cut mid-stream, slow).
