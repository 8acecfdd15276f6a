//! The agent end to end: stretcher's own suite ported, inputs, hooks, placing files, bad input.
