// Package integration holds latch's end-to-end tests. They run against real
// Vault, SPIRE and PostgreSQL processes that the harness in
// integration/stack starts on 127.0.0.1; nothing is mocked. A missing tool
// fails the tests with "run 'make tools'"; they never skip.
package integration
