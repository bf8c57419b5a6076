package console

import (
	"crypto/sha256"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

func testKeys() []byte {
	k := make([]byte, SessionKeySize)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}

// clock is a settable now.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestSafeNext(t *testing.T) {
	for next, want := range map[string]string{
		"/approvals/01J":         "/approvals/01J",
		"/leases?agent=a":        "/leases?agent=a",
		"":                       "/approvals",
		"//evil.example/x":       "/approvals",
		`/\evil.example`:         "/approvals",
		"https://evil.example/":  "/approvals",
		"javascript:alert(1)":    "/approvals",
		"approvals":              "/approvals",
		"/%2F%2Fevil.example/a":  "/%2F%2Fevil.example/a", // a path on the console, percent-encoded
		"/x\\y":                  "/approvals",
		"///evil.example":        "/approvals",
		"/cli/login?state=a&b=c": "/cli/login?state=a&b=c",
	} {
		if got := safeNext(next); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", next, got, want)
		}
	}
}

// FuzzSafeNext: whatever a query holds, the sign-in returns to a path on
// the console's own origin.
func FuzzSafeNext(f *testing.F) {
	for _, s := range []string{"/approvals", "//x", `/\x`, "https://x/", "/a?b=//c", " /x", "/\t/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, next string) {
		got := safeNext(next)
		base, _ := url.Parse("https://latch.example.org:8444/")
		u, err := base.Parse(got)
		if err != nil || u.Host != base.Host || u.Scheme != "https" || !strings.HasPrefix(got, "/") {
			t.Fatalf("safeNext(%q) = %q resolves to %v (%v)", next, got, u, err)
		}
	})
}

func TestLoopbackRedirect(t *testing.T) {
	for s, want := range map[string]bool{
		"http://127.0.0.1:4711/callback": true,
		"http://[::1]:4711/callback":     true,
		"http://127.0.0.1/callback":      false, // no port
		"https://127.0.0.1:4711/cb":      false,
		"http://localhost:4711/cb":       false, // a name can resolve anywhere
		"http://10.0.0.1:4711/cb":        false,
		"http://127.0.0.1.evil:4711/cb":  false,
		"http://u@127.0.0.1:4711/cb":     false,
		"http://127.0.0.1:4711/cb#x":     false,
		"":                               false,
	} {
		if got := loopbackRedirect(s); got != want {
			t.Errorf("loopbackRedirect(%q) = %v, want %v", s, got, want)
		}
	}
}

// A session cookie round-trips; it ends at its lifetime and its idle
// timeout, and a changed cookie is no session.
func TestCookies_Session(t *testing.T) {
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	c := newCookies(testKeys(), time.Hour, 10*time.Minute, clk.now)
	s := &session{Issuer: "https://idp.example.org/", Subject: "u-alice", Email: "alice@example.org", Created: clk.t.Unix(), CSRF: "t"}
	rec := httptest.NewRecorder()
	if err := c.setSession(rec, s); err != nil {
		t.Fatal(err)
	}
	ck := rec.Result().Cookies()[0]
	if ck.Name != sessionCookie || !ck.HttpOnly || !ck.Secure || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/" {
		t.Fatalf("cookie %+v: want __Host-, HttpOnly, Secure, SameSite=Strict, Path=/", ck)
	}
	get := func(value string) (*session, error) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.AddCookie(&http.Cookie{Name: sessionCookie, Value: value})
		return c.session(r)
	}
	if got, err := get(ck.Value); err != nil || got.Subject != "u-alice" {
		t.Fatalf("session = %+v, %v", got, err)
	}
	if _, err := get(ck.Value[:len(ck.Value)-2] + "xx"); err != errNoSession {
		t.Fatalf("a changed cookie: %v, want no session", err)
	}
	clk.t = clk.t.Add(11 * time.Minute)
	if _, err := get(ck.Value); err != errNoSession {
		t.Fatalf("past the idle timeout: %v, want no session", err)
	}
	// Seen again within the idle timeout, but past the lifetime.
	clk.t = time.Unix(s.Created, 0).Add(59 * time.Minute)
	rec = httptest.NewRecorder()
	_ = c.setSession(rec, s)
	clk.t = clk.t.Add(2 * time.Minute)
	if _, err := get(rec.Result().Cookies()[0].Value); err != errNoSession {
		t.Fatalf("past the lifetime: %v, want no session", err)
	}
}

func testConsole(clk *clock) *Console {
	cfg := Config{URL: "https://latch.example.org", SessionLifetime: time.Hour, IdleTimeout: 10 * time.Minute, StepUpAge: time.Minute}
	return &Console{cfg: cfg, log: slog.New(slog.DiscardHandler), now: clk.now, cookies: newCookies(testKeys(), time.Hour, 10*time.Minute, clk.now)}
}

// The CLI's code is worth a session token only with the PKCE verifier
// and the redirect URI it was issued for, and only within its minute;
// the token identifies the person, and neither a session cookie's value
// nor a code is a token.
func TestCLIExchange(t *testing.T) {
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	c := testConsole(clk)
	verifier := "a-verifier-of-enough-length-0123456789-abcdefgh"
	sum := sha256.Sum256([]byte(verifier))
	s := session{Issuer: "https://idp.example.org/", Subject: "u-carol", Email: "carol@example.org", Groups: []string{"approvers"}, Created: clk.t.Unix()}
	redirect := "http://127.0.0.1:4711/callback"
	code, err := c.cookies.codec.Encode(cliCodeName, cliGrant{Session: s, Challenge: base64.RawURLEncoding.EncodeToString(sum[:]),
		Redirect: redirect, Expires: clk.t.Add(cliCodeTTL).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	exchange := func(code, verifier, redirect string) (int, string) {
		body := url.Values{"code": {code}, "code_verifier": {verifier}, "redirect_uri": {redirect}}.Encode()
		r := httptest.NewRequest(http.MethodPost, "/cli/token", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		w := httptest.NewRecorder()
		c.cliExchange(w, r)
		b, _ := io.ReadAll(w.Result().Body)
		return w.Code, string(b)
	}
	if status, body := exchange(code, "wrong-verifier", redirect); status != 400 || strings.Contains(body, "token\"") {
		t.Fatalf("wrong verifier: %d %s", status, body)
	}
	if status, _ := exchange(code, verifier, "http://127.0.0.1:9999/callback"); status != 400 {
		t.Fatalf("other redirect: %d", status)
	}
	status, body := exchange(code, verifier, redirect)
	if status != 200 {
		t.Fatalf("exchange: %d %s", status, body)
	}
	token := body[strings.Index(body, `"token":"`)+9:]
	token = token[:strings.IndexByte(token, '"')]
	person := func(token string) (string, error) {
		r := httptest.NewRequest(http.MethodGet, "/v1/whoami", nil)
		r.Header.Set("Authorization", "Bearer "+token)
		p, err := c.Person(r)
		if err != nil {
			return "", err
		}
		return p.ID() + " " + strings.Join(p.Groups, ","), nil
	}
	if got, err := person(token); err != nil || got != "https://idp.example.org/#u-carol approvers" {
		t.Fatalf("Person(token) = %q, %v", got, err)
	}
	if _, err := person(code); err == nil {
		t.Fatal("a code was taken for a token")
	}
	cookie, _ := c.cookies.codec.Encode(sessionCookie, s)
	if _, err := person(cookie); err == nil {
		t.Fatal("a session cookie's value was taken for a token")
	}
	clk.t = clk.t.Add(2 * time.Minute)
	if status, _ := exchange(code, verifier, redirect); status != 400 {
		t.Fatalf("an expired code: %d", status)
	}
	clk.t = clk.t.Add(time.Hour)
	if _, err := person(token); err == nil {
		t.Fatal("a token past the session lifetime was taken")
	}
}

func TestContentPolicy(t *testing.T) {
	csp := contentPolicy("https://idp.example.org:8443/realms/x")
	for _, want := range []string{"default-src 'none'", "frame-ancestors 'none'", "form-action 'self' https://idp.example.org:8443;", "base-uri 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") {
		t.Errorf("CSP allows something unsafe: %q", csp)
	}
}

// FuzzLoopbackRedirect: a redirect the CLI sign-in accepts goes to a
// loopback address, over plain HTTP, with a port.
func FuzzLoopbackRedirect(f *testing.F) {
	for _, s := range []string{"http://127.0.0.1:1/cb", "http://[::1]:2/", "http://127.0.0.1.x:1/", "http://[::ffff:127.0.0.1]:3/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !loopbackRedirect(s) {
			return
		}
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "http" || u.Port() == "" {
			t.Fatalf("accepted %q: %v %v", s, u, err)
		}
		if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
			t.Fatalf("accepted %q, whose host %q is not a loopback IP", s, u.Hostname())
		}
	})
}
