//! placeholder sync (issue #4)
