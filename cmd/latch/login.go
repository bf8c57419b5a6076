package main

// latch login, logout and whoami: a person signs in through the browser
// (the console's OIDC sign-in, RFC 8252 loopback redirect with PKCE), and
// the operator commands use the session saved in the user's config
// directory until it expires.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/latchbroker/latch/broker/client"
)

// savedSession is the file `latch login` writes: the console to call and
// the session token to call it with.
type savedSession struct {
	Console   string    `json:"console"`
	CAFile    string    `json:"ca_file,omitempty"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	Person    string    `json:"person"`
	Email     string    `json:"email,omitempty"`
}

// sessionPath is $XDG_CONFIG_HOME/latch/session.json (or the platform's
// user config directory).
func sessionPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no user config directory to keep the session in: %w", err)
	}
	return filepath.Join(dir, "latch", "session.json"), nil
}

// loadSession returns the saved session, nil when there is none.
func loadSession() (*savedSession, error) {
	path, err := sessionPath()
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s savedSession
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("%s: %w (latch logout removes it)", path, err)
	}
	return &s, nil
}

func (s *savedSession) save() (string, error) {
	path, err := sessionPath()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	raw, _ := json.MarshalIndent(s, "", "  ")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return "", err
	}
	return path, os.Rename(tmp, path)
}

// sessionClient is a client of the console's operator API with the
// session's token.
func (s *savedSession) client() (*client.Client, error) {
	if time.Now().After(s.ExpiresAt) {
		return nil, fmt.Errorf("your latch session as %s expired at %s: run latch login", s.display(), fmtTime(s.ExpiresAt))
	}
	hc, err := consoleHTTPClient(s.CAFile)
	if err != nil {
		return nil, err
	}
	hc.Transport = bearer{token: s.Token, next: hc.Transport}
	return client.New(hc, s.Console)
}

func (s *savedSession) display() string {
	if s.Email != "" {
		return s.Email
	}
	return s.Person
}

// bearer adds the session token to every request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

// consoleHTTPClient trusts the system's roots, or caFile's.
func consoleHTTPClient(caFile string) (*http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS13}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca %s holds no PEM certificate", caFile)
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	return &http.Client{Transport: tr, Timeout: remoteCallTimeout}, nil
}

func loginCommand() *cli.Command {
	return &cli.Command{
		Name:  "login",
		Usage: "sign in as a person, through the browser and the organisation's identity provider",
		Description: "Opens the console's sign-in in a browser ($BROWSER, or the URL printed for you to open),\n" +
			"where you sign in with the identity provider and allow the CLI. The session is kept in\n" +
			"your config directory (mode 0600) until it expires; operator commands (approval, lease,\n" +
			"revoke, agent, freeze, report, audit tail) then act as you, through the console's address,\n" +
			"unless --cert/--key or --admin-socket say otherwise. latch logout forgets it.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "console", EnvVars: []string{"LATCH_CONSOLE"}, Required: true, Usage: "the console's `URL` (console.url in latch.yaml)"},
			&cli.StringFlag{Name: "ca", EnvVars: []string{"LATCH_CONSOLE_CA"}, Usage: "CA `FILE` (PEM) that signed the console's certificate, when not a system root"},
			&cli.DurationFlag{Name: "timeout", Value: 5 * time.Minute, Usage: "how long to wait for the sign-in in the browser"},
		},
		Action: func(c *cli.Context) error { return fail(c, login(c)) },
	}
}

func login(c *cli.Context) error {
	console := strings.TrimSuffix(c.String("console"), "/")
	if u, err := url.Parse(console); err != nil || u.Scheme != "https" || u.Host == "" {
		return usageErrorf("--console %q: want the console's https URL", c.String("console"))
	}
	ca := c.String("ca")
	if ca != "" {
		abs, err := filepath.Abs(ca)
		if err != nil {
			return err
		}
		ca = abs
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen on loopback for the browser's return: %w", err)
	}
	defer ln.Close()
	verifier := randomURLToken()
	sum := sha256.Sum256([]byte(verifier))
	state := randomURLToken()
	redirect := "http://" + ln.Addr().String() + "/callback"
	start := console + "/cli/login?" + url.Values{"redirect_uri": {redirect}, "state": {state},
		"code_challenge": {base64.RawURLEncoding.EncodeToString(sum[:])}, "code_challenge_method": {"S256"}}.Encode()

	codes := make(chan string, 1)
	srv := &http.Server{Handler: loginCallback(state, codes), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	fmt.Fprintf(c.App.ErrWriter, "Open this address in your browser to sign in:\n  %s\n", start)
	openBrowser(start)

	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	var code string
	select {
	case code = <-codes:
	case <-ctx.Done():
		return fmt.Errorf("no sign-in came back within %s", c.Duration("timeout"))
	}
	s, err := exchangeCode(ctx, console, ca, code, verifier, redirect)
	if err != nil {
		return err
	}
	path, err := s.save()
	if err != nil {
		return fmt.Errorf("keep the session: %w", err)
	}
	fmt.Fprintf(c.App.Writer, "signed in as %s (%s) until %s; session kept in %s\n", s.display(), s.Person, fmtTime(s.ExpiresAt), path)
	return nil
}

// loginCallback takes the browser's return: the code, if the state is
// the one this login sent.
func loginCallback(state string, codes chan<- string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if r.URL.Path != "/callback" || q.Get("state") != state || q.Get("code") == "" {
			http.Error(w, "not the sign-in latch login is waiting for", http.StatusBadRequest)
			return
		}
		select {
		case codes <- q.Get("code"):
			fmt.Fprintln(w, "Signed in: you can close this tab and go back to the terminal.")
		default:
			http.Error(w, "this sign-in is already done", http.StatusConflict)
		}
	})
}

// exchangeCode swaps the code and the PKCE verifier for the session.
func exchangeCode(ctx context.Context, console, ca, code, verifier, redirect string) (*savedSession, error) {
	hc, err := consoleHTTPClient(ca)
	if err != nil {
		return nil, err
	}
	body := url.Values{"code": {code}, "code_verifier": {verifier}, "redirect_uri": {redirect}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, console+"/cli/token", strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("exchange the sign-in's code: %w", err)
	}
	defer resp.Body.Close()
	var out struct {
		Token     string    `json:"token"`
		ExpiresAt time.Time `json:"expires_at"`
		Person    string    `json:"person"`
		Email     string    `json:"email"`
		Error     string    `json:"error"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 64<<10)).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("exchange the sign-in's code: %s %s", resp.Status, out.Error)
	}
	return &savedSession{Console: console, CAFile: ca, Token: out.Token, ExpiresAt: out.ExpiresAt, Person: out.Person, Email: out.Email}, nil
}

// openBrowser runs $BROWSER with url, when set; the URL is printed anyway.
func openBrowser(u string) {
	if b := os.Getenv("BROWSER"); b != "" {
		_ = exec.Command(b, u).Start()
	}
}

func randomURLToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func logoutCommand() *cli.Command {
	return &cli.Command{
		Name:  "logout",
		Usage: "forget the session latch login kept",
		Action: func(c *cli.Context) error {
			path, err := sessionPath()
			if err == nil {
				err = os.Remove(path)
			}
			if errors.Is(err, os.ErrNotExist) {
				fmt.Fprintln(c.App.Writer, "not signed in")
				return nil
			}
			if err != nil {
				return fail(c, err)
			}
			fmt.Fprintln(c.App.Writer, "signed out: the session is forgotten here (it stays valid until it expires for whoever copied it)")
			return nil
		},
	}
}

func whoamiCommand() *cli.Command {
	return &cli.Command{
		Name:        "whoami",
		Usage:       "show who the latch server takes you for, and your operator roles",
		Description: "Asks the server, with the identity the other commands would use." + connHelp,
		Flags:       append(connFlags(true), outputFlag("text", "json")),
		Action: remote(func(c *cli.Context, args []string, connect connector) error {
			cl, err := connect()
			if err != nil {
				return err
			}
			ctx, cancel := callCtx(c)
			defer cancel()
			w, err := cl.WhoAmI(ctx)
			if err != nil {
				return err
			}
			if c.String("output") == "json" {
				return json.NewEncoder(c.App.Writer).Encode(w)
			}
			fmt.Fprintf(c.App.Writer, "%s (%s)", w.ID, w.Kind)
			if w.Email != "" {
				fmt.Fprintf(c.App.Writer, " %s", w.Email)
			}
			fmt.Fprintf(c.App.Writer, "\nroles: %s\n", dash(strings.Join(w.Roles, ", ")))
			return nil
		}),
	}
}
