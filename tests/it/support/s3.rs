//! A real S3-compatible server (moto_server from PyPI) on 127.0.0.1 with static test credentials.
