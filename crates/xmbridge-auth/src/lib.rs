//! Authentication for every external account xmbridge talks to (to be built in issue #3).
//!
//! It will own the three Qualtrics modes — API token, OAuth 2.0 authorization code with refresh
//! token (`xmbridge connection authorize` listening on 127.0.0.1 for the redirect), and client
//! credentials over mutual TLS with a client certificate and a possibly encrypted PKCS#8 key — plus
//! the same token lifecycle for Salesforce and ServiceNow: refresh before expiry, and a refused
//! refresh turned into "account token expired" with the command that re-authorizes. It hands
//! tokens to `xmbridge-qualtrics` through its `Auth` type and must not touch HTTP endpoints of the
//! Qualtrics API itself, storage (secrets are persisted only through `xmbridge-vault`), or sync
//! and workflow logic.
