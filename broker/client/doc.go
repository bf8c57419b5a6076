// Package client is the Go client of latch's HTTP API, used by the latch CLI
// and by Go agents.
package client
