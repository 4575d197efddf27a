//! Connections and their sealed secrets in the state store (to be built in issue #3).
//!
//! It will own named connections (account URL, data center, auth mode, default directory) and
//! their secrets — API tokens, OAuth client secrets and refresh tokens, private keys and pass
//! phrases — sealed with an AEAD under a master key taken from an environment variable or a 0600
//! key file created on first use. Secrets never appear in logs, errors or `Debug` output. It must
//! not talk to any external API (that is `xmbridge-auth` and the clients) and must not hold sync
//! cursors, workflow state or destination data.
