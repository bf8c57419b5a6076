package vaultenv

import (
	"fmt"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/backends/vaultlease"
	"github.com/latchbroker/latch/backends/vaultpki"
	"github.com/latchbroker/latch/backends/vaulttoken"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/templates"
)

// BackendConfig is one entry of a test's backends: section. It travels
// as JSON to the crash child, which builds the same backends.
type BackendConfig struct {
	Type  string `json:"type"`
	Path  string `json:"path,omitempty"`
	Mount string `json:"mount,omitempty"`
	Role  string `json:"role,omitempty"`
}

// NewBackends builds the configured backends on c, as cmd/latch does,
// and returns them with what the template loader needs to know of them.
func NewBackends(c *vault.Client, cfgs map[string]BackendConfig) (map[string]broker.Backend, map[string]templates.Backend, error) {
	out := map[string]broker.Backend{}
	tb := map[string]templates.Backend{}
	for name, b := range cfgs {
		var be broker.Backend
		var err error
		switch b.Type {
		case vaulttoken.Type:
			be, err = vaulttoken.New(c, vaulttoken.Config{})
		case vaultlease.Type:
			be, err = vaultlease.New(c, vaultlease.Config{Path: b.Path})
		case vaultpki.Type:
			be, err = vaultpki.New(c, vaultpki.Config{Mount: b.Mount, Role: b.Role})
		default:
			err = fmt.Errorf("backend %s: unknown type %q", name, b.Type)
		}
		if err != nil {
			return nil, nil, err
		}
		out[name] = be
		tb[name] = templates.Backend{Type: b.Type, Path: b.Path}
	}
	return out, tb, nil
}
