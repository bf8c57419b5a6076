// Package server tests the built `latch server` binary end to end, as an
// operator runs it: a config file with SVID files minted by the harness's
// SPIRE, Vault set up by package vaultenv from the README's policy, the
// harness's PostgreSQL behind a database engine. Agents and operators call
// it over mutual TLS with SVIDs from SPIRE (broker/client over
// attest.NewHTTPClient), the break-glass operator over the admin socket;
// the tests also signal the process (SIGHUP, kill -9) and read its
// /metrics.
//
//	go test -race -count=1 ./integration/server/
package server
