//! placeholder destinations (issue #4)
