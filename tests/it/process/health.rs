//! Health checks against real demo-app processes.
