//! placeholder workflows (issue #5)
