//! TODO(skeleton): filled in by its owner (see docs/serve.md).
