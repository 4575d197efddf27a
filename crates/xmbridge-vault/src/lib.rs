//! placeholder vault (issue #3)
