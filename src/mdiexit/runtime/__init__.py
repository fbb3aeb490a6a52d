"""The node runtime: a pure per-node step (core), its process shell (node), the source, and the launcher."""
