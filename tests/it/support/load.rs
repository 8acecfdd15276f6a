//! A load generator that keeps requests flowing through the proxy and counts every failure.
