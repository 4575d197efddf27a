//! placeholder auth (issue #3)
