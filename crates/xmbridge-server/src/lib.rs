//! placeholder server (issue #5)
