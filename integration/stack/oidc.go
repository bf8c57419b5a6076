package stack

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Person is a user of the test OpenID Provider.
type Person struct {
	ID       string   `json:"id"` // the ID token's sub
	Username string   `json:"username"`
	Password string   `json:"password"`
	Email    string   `json:"email"`
	Name     string   `json:"name"`
	Groups   []string `json:"groups"`
}

// People are the provider's users: alice, carol and dave approve, bob
// owns the agents (and is in the approvers' group, so that only the
// owner rule keeps him from approving), viewer only looks.
var People = map[string]Person{
	"alice":  {ID: "u-alice", Username: "alice", Password: "alice-pw", Email: "alice@example.org", Name: "Alice", Groups: []string{"approvers"}},
	"carol":  {ID: "u-carol", Username: "carol", Password: "carol-pw", Email: "carol@example.org", Name: "Carol", Groups: []string{"approvers"}},
	"dave":   {ID: "u-dave", Username: "dave", Password: "dave-pw", Email: "dave@example.org", Name: "Dave", Groups: []string{"approvers"}},
	"bob":    {ID: "u-bob", Username: "bob", Password: "bob-pw", Email: "bob@example.org", Name: "Bob", Groups: []string{"approvers"}},
	"viewer": {ID: "u-viewer", Username: "viewer", Password: "viewer-pw", Email: "viewer@example.org", Name: "Viewer", Groups: []string{"viewers"}},
}

// OIDC is a running OpenID Provider on loopback, over TLS: zitadel/oidc's
// provider (.tools/bin/latch-oidc-provider, built by make tools) with
// People as its users and one client, latch.
type OIDC struct {
	Issuer     string // https://127.0.0.1:port/
	ClientID   string
	SecretFile string
	// CAFile is the PEM CA that signed the provider's certificate (and
	// the certificates LoopbackCert writes).
	CAFile string
	ca     *loopbackCA
	proc   *process
}

// StartOIDC starts a provider in dir whose client latch may redirect to
// redirectURIs. Stop it with Stop.
func StartOIDC(ctx context.Context, dir string, redirectURIs ...string) (*OIDC, error) {
	bin, err := tool("latch-oidc-provider")
	if err != nil {
		return nil, err
	}
	ca, err := newLoopbackCA()
	if err != nil {
		return nil, err
	}
	o := &OIDC{ClientID: "latch", SecretFile: filepath.Join(dir, "oidc-client-secret"), CAFile: filepath.Join(dir, "oidc-ca.pem"), ca: ca}
	if err := os.WriteFile(o.CAFile, ca.certPEM, 0o644); err != nil {
		return nil, err
	}
	cert, key, err := o.LoopbackCert(dir, "oidc")
	if err != nil {
		return nil, err
	}
	users := make([]Person, 0, len(People))
	for _, p := range People {
		users = append(users, p)
	}
	raw, _ := json.Marshal(users)
	usersFile := filepath.Join(dir, "oidc-users.json")
	if err := os.WriteFile(usersFile, raw, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(o.SecretFile, []byte(randomHex(16)+"\n"), 0o600); err != nil {
		return nil, err
	}
	port, err := FreePort(false)
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	o.Issuer = "https://" + addr + "/"
	o.proc, err = startProcess(dir, "oidc", nil, nil, bin, "-listen", addr, "-issuer", o.Issuer, "-cert", cert, "-key", key,
		"-users", usersFile, "-client-id", o.ClientID, "-client-secret-file", o.SecretFile, "-redirect-uris", strings.Join(redirectURIs, ","))
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := waitFor(wctx, o.proc, "the OpenID Provider", o.discoverable); err != nil {
		o.Stop()
		return nil, err
	}
	return o, nil
}

// discoverable is ready once the discovery document is served.
func (o *OIDC) discoverable(ctx context.Context) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(o.ca.certPEM)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 2 * time.Second}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, o.Issuer+".well-known/openid-configuration", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("discovery: %s", resp.Status)
	}
	return nil
}

// Stop stops the provider.
func (o *OIDC) Stop() { o.proc.stop(5 * time.Second) }

// Log is the provider's log.
func (o *OIDC) Log() string {
	b, _ := os.ReadFile(o.proc.logPath)
	return string(b)
}

// LoopbackCert writes a certificate for 127.0.0.1 and localhost signed
// by the provider's CA, as dir/name.pem and dir/name-key.pem.
func (o *OIDC) LoopbackCert(dir, name string) (certFile, keyFile string, err error) {
	certPEM, keyPEM, err := o.ca.issue()
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, os.WriteFile(keyFile, keyPEM, 0o600)
}

// loopbackCA signs certificates for loopback servers.
type loopbackCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

func newLoopbackCA() (*loopbackCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "latch test loopback CA"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &loopbackCA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

func (ca *loopbackCA) issue() (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return fmt.Sprintf("%x", b)
}
