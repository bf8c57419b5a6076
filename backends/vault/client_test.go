package vault_test

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/broker"
)

// These unit tests drive the client against small fake Vault servers to pin
// down retry, timeout, TLS and login behaviour exactly; the real Vault is
// exercised in integration/backends.

type recorder struct {
	mu    sync.Mutex
	calls []call
}

type call struct {
	op, outcome string
}

func (r *recorder) ObserveVaultCall(op, outcome string, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call{op, outcome})
}

func (r *recorder) VaultTokenEnd(time.Time) {}

func (r *recorder) ops() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, c := range r.calls {
		out = append(out, c.op+"="+c.outcome)
	}
	return out
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeVault answers token lookup-self for "good-token" and hands the rest
// to h.
func fakeVault(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/auth/token/lookup-self" {
			if r.Header.Get("X-Vault-Token") != "good-token" {
				http.Error(w, `{"errors":["permission denied"]}`, http.StatusForbidden)
				return
			}
			fmt.Fprint(w, `{"data":{"accessor":"acc-latch","ttl":0,"renewable":false}}`)
			return
		}
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func newClient(t *testing.T, addr string, edit func(*vault.Config)) (*vault.Client, *recorder) {
	t.Helper()
	rec := &recorder{}
	cfg := vault.Config{
		Address:      addr,
		Timeout:      time.Second,
		RetryWaitMin: 5 * time.Millisecond,
		RetryWaitMax: 20 * time.Millisecond,
		Auth:         vault.AuthConfig{Method: vault.AuthToken, TokenFile: writeFile(t, "token", "good-token\n")},
		Metrics:      rec,
	}
	if edit != nil {
		edit(&cfg)
	}
	c, err := vault.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, rec
}

func login(t *testing.T, c *vault.Client) {
	t.Helper()
	if err := c.Login(t.Context()); err != nil {
		t.Fatalf("Login: %v", err)
	}
}

func TestClient_Do(t *testing.T) {
	tests := []struct {
		name      string
		statuses  []int // answers in order; the last repeats
		wantCalls int32
		wantErr   string // "" = success
		retryable bool
	}{
		{"RetriesThen200", []int{500, 503, 200}, 3, "", false},
		{"Retries429", []int{429, 200}, 2, "", false},
		{"Retries412", []int{412, 200}, 2, "", false},
		{"ErrGivesUpAfterMaxRetries", []int{502}, 3, "502 Bad Gateway", true},
		{"ErrNoRetryOn400", []int{400}, 1, "400 Bad Request: nope", false},
		{"ErrNoRetryOn404", []int{404}, 1, "404 Not Found", false},
		{"ErrNoRetryOn501", []int{501}, 1, "501 Not Implemented", false},
		{"NoContent", []int{204}, 1, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var n atomic.Int32
			srv := fakeVault(t, func(w http.ResponseWriter, r *http.Request) {
				i := int(n.Add(1)) - 1
				code := tt.statuses[min(i, len(tt.statuses)-1)]
				if r.Header.Get("X-Vault-Token") != "good-token" {
					t.Errorf("call without latch's token")
				}
				switch {
				case code == 200:
					fmt.Fprint(w, `{"data":{"k":"v"}}`)
				case code == 204:
					w.WriteHeader(204)
				default:
					w.WriteHeader(code)
					fmt.Fprint(w, `{"errors":["nope"]}`)
				}
			})
			c, rec := newClient(t, srv.URL, nil)
			login(t, c)
			s, err := c.Read(t.Context(), "test.read", "secret/x")
			if got := n.Load(); got != tt.wantCalls {
				t.Errorf("Vault saw %d calls, want %d", got, tt.wantCalls)
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Read: %v", err)
				}
				if tt.statuses[len(tt.statuses)-1] == 200 && s.Data["k"] != "v" {
					t.Fatalf("Read data = %v", s.Data)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Read error = %v, want %q", err, tt.wantErr)
			}
			if got := errors.Is(err, broker.ErrBackendUnavailable); got != tt.retryable {
				t.Fatalf("errors.Is(err, ErrBackendUnavailable) = %v, want %v (err %v)", got, tt.retryable, err)
			}
			var ve *vault.Error
			if !errors.As(err, &ve) || ve.Op != "test.read" || ve.Path != "secret/x" {
				t.Fatalf("error %#v does not name op and path", err)
			}
			if ops := rec.ops(); ops[len(ops)-1] != "test.read="+vault.Outcome(err) {
				t.Fatalf("metrics = %v", ops)
			}
		})
	}
}

func TestClient_Unreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := "http://" + l.Addr().String()
	l.Close() // nothing listens there now
	c, rec := newClient(t, addr, nil)
	start := time.Now()
	err = c.Login(t.Context())
	if !errors.Is(err, broker.ErrBackendUnavailable) {
		t.Fatalf("Login to a closed port = %v, want ErrBackendUnavailable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Login took %s to fail", d)
	}
	// Calls before any successful login fail fast and retryable.
	_, err = c.Read(t.Context(), "test.read", "secret/x")
	if !errors.Is(err, broker.ErrBackendUnavailable) || !errors.Is(err, vault.ErrNotLoggedIn) {
		t.Fatalf("Read before login = %v", err)
	}
	if ops := rec.ops(); len(ops) != 2 || ops[0] != "auth.lookup-self=unavailable" {
		t.Fatalf("metrics = %v", ops)
	}
}

// hangServer accepts connections and never answers.
func hangServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() { _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	t.Cleanup(func() {
		close(done)
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + l.Addr().String()
}

func TestClient_DeadlineWhenVaultHangs(t *testing.T) {
	c, _ := newClient(t, hangServer(t), func(cfg *vault.Config) {
		cfg.Timeout = 300 * time.Millisecond
	})
	// Each attempt times out after 300ms; 3 attempts plus backoff < 1.5s.
	start := time.Now()
	err := c.Login(t.Context())
	if !errors.Is(err, broker.ErrBackendUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Login = %v, want unavailable deadline", err)
	}
	if d := time.Since(start); d < 900*time.Millisecond || d > 2*time.Second {
		t.Fatalf("Login against a hanging Vault took %s; want about 3 x 300ms", d)
	}
	// The caller's deadline wins over the per-attempt timeout and retries.
	c2, _ := newClient(t, hangServer(t), func(cfg *vault.Config) { cfg.Timeout = 10 * time.Second })
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start = time.Now()
	err = c2.Login(ctx)
	if !errors.Is(err, broker.ErrBackendUnavailable) {
		t.Fatalf("Login = %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Login ignored the context deadline: %s", d)
	}
}

func TestClient_ReloginOn403(t *testing.T) {
	var logins, reads atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/auth/approle/login":
			if r.Header.Get("X-Vault-Token") != "" {
				t.Errorf("login sent a token")
			}
			n := logins.Add(1)
			fmt.Fprintf(w, `{"auth":{"client_token":"tok-%d","accessor":"acc-%d","lease_duration":3600,"renewable":true}}`, n, n)
		case "/v1/secret/x":
			reads.Add(1)
			if r.Header.Get("X-Vault-Token") != "tok-2" {
				w.WriteHeader(403)
				fmt.Fprint(w, `{"errors":["permission denied"]}`)
				return
			}
			fmt.Fprint(w, `{"data":{}}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	c, _ := newClient(t, srv.URL, func(cfg *vault.Config) {
		cfg.Auth = vault.AuthConfig{Method: vault.AuthAppRole,
			RoleIDFile: writeFile(t, "role", "r"), SecretIDFile: writeFile(t, "secret", "s")}
	})
	login(t, c)
	// Right after a login a 403 is the policy speaking: no re-login.
	if _, err := c.Read(t.Context(), "test.read", "secret/x"); vault.StatusOf(err) != 403 {
		t.Fatalf("Read = %v, want 403", err)
	}
	if logins.Load() != 1 {
		t.Fatalf("re-logged in %d times right after login", logins.Load()-1)
	}
	if c.Accessor() != "acc-1" {
		t.Fatalf("Accessor = %q", c.Accessor())
	}

	// Later, a 403 may mean latch's token was revoked: log in once more
	// and retry once.
	defer vault.SetMinReloginInterval(0)()
	if _, err := c.Read(t.Context(), "test.read", "secret/x"); err != nil {
		t.Fatalf("Read after re-login: %v", err)
	}
	if logins.Load() != 2 || c.Accessor() != "acc-2" {
		t.Fatalf("logins = %d, accessor %q; want one re-login", logins.Load(), c.Accessor())
	}
	// A 403 that survives the re-login is returned, not retried forever.
	reads.Store(0)
	if _, err := c.Do(t.Context(), vault.Request{Op: "x", Method: "GET", Path: "secret/x",
		Token: broker.NewSecret(map[string]string{"token": "other"})}); vault.StatusOf(err) != 403 {
		t.Fatalf("Read with a foreign token = %v, want 403", err)
	}
	if reads.Load() != 1 || logins.Load() != 2 {
		t.Fatalf("a 403 on a per-call token caused %d reads and %d logins", reads.Load(), logins.Load())
	}
}

func TestClient_IgnoresVaultEnvironment(t *testing.T) {
	t.Setenv("VAULT_TOKEN", "env-token")
	t.Setenv("VAULT_ADDR", "http://127.0.0.1:1")
	t.Setenv("VAULT_NAMESPACE", "env-ns")
	var sawEnv atomic.Bool
	srv := fakeVault(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Vault-Token") == "env-token" || r.Header.Get("X-Vault-Namespace") != "" {
			sawEnv.Store(true)
		}
		fmt.Fprint(w, `{"data":{}}`)
	})
	c, _ := newClient(t, srv.URL, nil)
	if _, err := c.Read(t.Context(), "test.read", "secret/x"); !errors.Is(err, vault.ErrNotLoggedIn) {
		t.Fatalf("Read before login = %v, want ErrNotLoggedIn (VAULT_TOKEN must not count)", err)
	}
	login(t, c)
	if _, err := c.Read(t.Context(), "test.read", "secret/x"); err != nil {
		t.Fatal(err)
	}
	if sawEnv.Load() {
		t.Fatal("client used VAULT_TOKEN or VAULT_NAMESPACE from the environment")
	}
}

func TestClient_PerCallToken(t *testing.T) {
	var got sync.Map
	srv := fakeVault(t, func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.URL.Path, r.Header.Get("X-Vault-Token"))
		fmt.Fprint(w, `{"data":{}}`)
	})
	c, _ := newClient(t, srv.URL, nil)
	login(t, c)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			tok := broker.NewSecret(map[string]string{"token": fmt.Sprintf("mint-%d", i)})
			if _, err := c.Do(t.Context(), vault.Request{Op: "x", Method: "GET", Path: fmt.Sprintf("p/%d", i), Token: tok}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for i := range 20 {
		v, _ := got.Load(fmt.Sprintf("/v1/p/%d", i))
		if v != fmt.Sprintf("mint-%d", i) {
			t.Errorf("call %d carried token %v", i, v)
		}
	}
}

func TestClient_TLS(t *testing.T) {
	var version atomic.Uint32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		version.Store(uint32(r.TLS.Version))
		fmt.Fprint(w, `{"data":{"accessor":"a","ttl":0}}`)
	}))
	srv.StartTLS()
	defer srv.Close()
	caFile := writeFile(t, "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})))

	t.Run("VerifiesWithCAFileAndPrefers13", func(t *testing.T) {
		c, _ := newClient(t, srv.URL, func(cfg *vault.Config) { cfg.CACert = caFile })
		login(t, c)
		if version.Load() != tls.VersionTLS13 {
			t.Fatalf("negotiated TLS version %x, want 1.3", version.Load())
		}
	})
	t.Run("ErrUnknownCA", func(t *testing.T) {
		c, _ := newClient(t, srv.URL, func(cfg *vault.Config) { cfg.MaxRetries = -1 })
		err := c.Login(t.Context())
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("Login without the CA = %v, want a certificate error", err)
		}
	})
	t.Run("ErrBadCAFile", func(t *testing.T) {
		_, err := vault.New(vault.Config{Address: srv.URL, CACert: writeFile(t, "bad.pem", "not pem"),
			Auth: vault.AuthConfig{Method: vault.AuthToken, TokenFile: "x"}})
		if err == nil || !strings.Contains(err.Error(), "no PEM certificates") {
			t.Fatalf("New = %v", err)
		}
	})

	old := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	old.TLS = &tls.Config{MaxVersion: tls.VersionTLS11, MinVersion: tls.VersionTLS10}
	old.StartTLS()
	defer old.Close()
	t.Run("ErrRefusesTLS11", func(t *testing.T) {
		oldCA := writeFile(t, "old.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: old.Certificate().Raw})))
		c, _ := newClient(t, old.URL, func(cfg *vault.Config) { cfg.CACert = oldCA; cfg.MaxRetries = -1 })
		err := c.Login(t.Context())
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), "protocol version") {
			t.Fatalf("Login to a TLS 1.1 server = %v, want a protocol version error", err)
		}
	})
}

func TestConfig_Validate(t *testing.T) {
	jwt := func(context.Context) (string, error) { return "", nil }
	tests := []struct {
		name string
		cfg  vault.Config
		want string
	}{
		{"Token", vault.Config{Address: "https://v:8200", Auth: vault.AuthConfig{Method: "token", TokenFile: "/f"}}, ""},
		{"AppRole", vault.Config{Address: "http://127.0.0.1:8200", Auth: vault.AuthConfig{Method: "approle", RoleIDFile: "/r", SecretIDFile: "/s", Mount: "ar"}}, ""},
		{"JWT", vault.Config{Address: "https://v", Auth: vault.AuthConfig{Method: "jwt", Role: "latch", JWT: jwt}}, ""},
		{"ErrNoAddress", vault.Config{Auth: vault.AuthConfig{Method: "token", TokenFile: "/f"}}, "address is required"},
		{"ErrBadScheme", vault.Config{Address: "ftp://v", Auth: vault.AuthConfig{Method: "token", TokenFile: "/f"}}, "expected an http(s) URL"},
		{"ErrNoMethod", vault.Config{Address: "https://v"}, "auth.method is required"},
		{"ErrUnknownMethod", vault.Config{Address: "https://v", Auth: vault.AuthConfig{Method: "ldap"}}, `unknown method "ldap"`},
		{"ErrAppRoleMissingFiles", vault.Config{Address: "https://v", Auth: vault.AuthConfig{Method: "approle"}}, "auth.role_id_file is required with method approle\nvault: auth.secret_id_file is required"},
		{"ErrJWTWithoutSource", vault.Config{Address: "https://v", Auth: vault.AuthConfig{Method: "jwt", Role: "r"}}, "needs a JWT source"},
		{"ErrUnusedKey", vault.Config{Address: "https://v", Auth: vault.AuthConfig{Method: "token", TokenFile: "/f", Role: "r"}}, "auth.role is not used by method token"},
		{"ErrNegativeTimeout", vault.Config{Address: "https://v", Timeout: -1, Auth: vault.AuthConfig{Method: "token", TokenFile: "/f"}}, "timeout must not be negative"},
		{"ErrMountSlash", vault.Config{Address: "https://v", Auth: vault.AuthConfig{Method: "approle", RoleIDFile: "/r", SecretIDFile: "/s", Mount: "/ar/"}}, "must not start or end with /"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestCleanPath(t *testing.T) {
	for _, p := range []string{"database/creds/report-eu", "aws/creds/deploy", "database/creds/r/AbC.123"} {
		if _, err := vault.CleanPath(p); err != nil {
			t.Errorf("CleanPath(%q): %v", p, err)
		}
	}
	for _, p := range []string{"", "/sys/x", "a/", "a//b", "a/../sys/policies", "a/./b", "a/b?x=1", "a/b#f", "a/%2e%2e", "a/b\n", `a\b`} {
		if _, err := vault.CleanPath(p); err == nil {
			t.Errorf("CleanPath(%q) accepted", p)
		}
	}
}
