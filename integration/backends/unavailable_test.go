package backends

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/backends/vaultlease"
	"github.com/latchbroker/latch/backends/vaultpki"
	"github.com/latchbroker/latch/backends/vaulttoken"
	"github.com/latchbroker/latch/broker"
)

// proxy stands between latch and the real Vault so a test can make Vault
// hang (accept connections, never answer) or stop (refuse connections)
// without touching the shared stack.
type proxy struct {
	l      net.Listener
	target string

	mu    sync.Mutex
	hang  bool
	conns []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: strings.TrimPrefix(target, "http://")}
	go p.serve()
	t.Cleanup(p.stop)
	return p
}

func (p *proxy) addr() string { return "http://" + p.l.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.conns = append(p.conns, c)
		hang := p.hang
		p.mu.Unlock()
		if hang {
			go func() { _, _ = io.Copy(io.Discard, c) }() // read, never answer
			continue
		}
		go func() {
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, up)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			_, _ = io.Copy(c, up)
			c.Close()
		}()
	}
}

// dropConns closes every connection, so kept-alive ones do not bypass the
// new mode.
func (p *proxy) dropConns() {
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// hangUp makes Vault accept connections and never answer.
func (p *proxy) hangUp() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hang = true
	p.dropConns()
}

// stop makes Vault refuse connections, as a stopped Vault does.
func (p *proxy) stop() {
	p.l.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dropConns()
}

type backends struct {
	tokens *vaulttoken.Backend
	leases *vaultlease.Backend
	certs  *vaultpki.Backend
}

func TestVaultUnavailable(t *testing.T) {
	e := setup(t)
	p := newProxy(t, st.Vault.Addr)
	c, err := vault.New(vault.Config{
		Address:      p.addr(),
		Timeout:      500 * time.Millisecond,
		MaxRetries:   2,
		RetryWaitMin: 50 * time.Millisecond,
		RetryWaitMax: 200 * time.Millisecond,
		Auth:         vault.AuthConfig{Method: vault.AuthAppRole, RoleIDFile: e.RoleIDFile, SecretIDFile: e.SecretIDFile},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(t.Context()); err != nil {
		t.Fatal(err)
	}
	var bs backends
	if bs.tokens, err = vaulttoken.New(c, vaulttoken.Config{}); err != nil {
		t.Fatal(err)
	}
	if bs.leases, err = vaultlease.New(c, vaultlease.Config{Path: "database/creds/{{ .vars.role }}"}); err != nil {
		t.Fatal(err)
	}
	if bs.certs, err = vaultpki.New(c, vaultpki.Config{Mount: pkiMount, Role: pkiRole}); err != nil {
		t.Fatal(err)
	}
	tokenReq := request("close-ticket", time.Minute)
	tokenReq.Policy = ticketPolicy
	cases := []struct {
		name string
		b    broker.Backend
		req  func() broker.MintRequest
	}{
		{"VaultToken", bs.tokens, func() broker.MintRequest { r := tokenReq; r.LeaseID = newLeaseID(); return r }},
		{"VaultLease", bs.leases, func() broker.MintRequest { return leaseRequest(time.Minute) }},
		{"VaultPKI", bs.certs, func() broker.MintRequest { return certRequest(time.Minute) }},
	}

	// Through the proxy everything works, and we keep refs to revoke later.
	minted := map[string]broker.Minted{}
	for _, tc := range cases {
		m, err := tc.b.Mint(t.Context(), tc.req())
		if err != nil {
			t.Fatalf("%s: Mint through the proxy: %v", tc.name, err)
		}
		minted[tc.name] = m
	}

	check := func(t *testing.T, what string, deadline time.Duration, call func(context.Context) error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), deadline)
		defer cancel()
		start := time.Now()
		err := call(ctx)
		took := time.Since(start)
		if !errors.Is(err, broker.ErrBackendUnavailable) {
			t.Errorf("%s = %v, want an error matching broker.ErrBackendUnavailable", what, err)
		}
		// The slack absorbs scheduling on a loaded 2-core machine; a call
		// that ignored its deadline would hang as long as the proxy does.
		if took > deadline+2*time.Second {
			t.Errorf("%s took %s, past its %s deadline", what, took.Round(time.Millisecond), deadline)
		}
		t.Logf("%s failed after %s: %v", what, took.Round(time.Millisecond), err)
	}

	t.Run("Hanging", func(t *testing.T) {
		p.hangUp()
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				check(t, "Mint", 2*time.Second, func(ctx context.Context) error { _, err := tc.b.Mint(ctx, tc.req()); return err })
				check(t, "Revoke", 2*time.Second, func(ctx context.Context) error { return tc.b.Revoke(ctx, minted[tc.name].Refs) })
				check(t, "Lookup", 2*time.Second, func(ctx context.Context) error { _, err := tc.b.Lookup(ctx, minted[tc.name].Refs); return err })
			})
		}
	})

	t.Run("Stopped", func(t *testing.T) {
		p.stop()
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				check(t, "Mint", 5*time.Second, func(ctx context.Context) error { _, err := tc.b.Mint(ctx, tc.req()); return err })
				check(t, "Revoke", 5*time.Second, func(ctx context.Context) error { return tc.b.Revoke(ctx, minted[tc.name].Refs) })
			})
		}
		check(t, "Login", 5*time.Second, func(ctx context.Context) error { return c.Login(ctx) })
	})

	// The revocations that failed are still owed: Vault is back (latch's
	// main client) and they succeed.
	for _, tc := range cases {
		var b broker.Backend
		switch tc.name {
		case "VaultToken":
			b = e.tokens
		case "VaultLease":
			b = e.leases
		default:
			b = e.certs
		}
		if err := b.Revoke(t.Context(), minted[tc.name].Refs); err != nil {
			t.Errorf("%s: retried Revoke: %v", tc.name, err)
		}
	}
}
