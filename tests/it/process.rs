//! Instances as real processes: spawn, process groups, graceful stop, adoption, health checks.
